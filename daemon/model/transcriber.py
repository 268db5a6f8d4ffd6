"""The transcriber: one loaded model; samples → windows → features → encoder → greedy decode → text segments."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.audio.windows import split_windows
from daemon.errors import AudioError
from daemon.model.backends import Backend
from daemon.model.budget import max_segment_seconds, split_search_seconds
from daemon.model.bundle import Bundle, encoder_frames
from daemon.model.decode import (
    DecodeOptions,
    DecodeResult,
    build_prompt,
    greedy_decode,
    resolve_max_new_tokens,
)
from daemon.model.features import log_mel, pad_frames
from daemon.model.fluidaudio_vocab import open_tokenizer
from daemon.model.segment import Segment
from daemon.model.tokenizer import Tokenizer


class Transcriber:
    """One loaded model (bundle + backend + tokenizer); transcribes windows of audio."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: Tokenizer, dither: float | None = None) -> None:
        self.bundle = bundle
        self.backend = backend
        self.tokenizer = tokenizer
        params = bundle.features
        self.features = params if dither is None else replace(params, dither=dither)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def pick_bucket(self, n_valid: int) -> int:
        """The frames the encoder takes for n_valid frames: n_valid itself where the encoder takes any length
        (ONNX), else the smallest bucket that holds them."""
        if n_valid > self.bundle.window_frames:
            raise AudioError(f"a window of {n_valid} frames is longer than the model's {self.bundle.window_frames}")
        return self.backend.input_frames(n_valid)

    def transcribe_window(self, samples: npt.NDArray[np.float32], options: DecodeOptions,
                          on_token: Callable[[int], None] | None = None,
                          timings: dict[str, float] | None = None) -> tuple[list[int], DecodeResult]:
        """Decode one window (≤ the full window length); returns (prompt, DecodeResult).

        timings: when given, the seconds spent in "features", "encoder" and "decoder" are added to it.
        """
        prompt = build_prompt(self.bundle, self.tokenizer, options.language, options.punctuation)
        budget = resolve_max_new_tokens(self.bundle, len(prompt), options.max_new_tokens)
        with _stage(timings, "features"):
            feats = log_mel(samples, self.features)  # (n_mels, n_valid)
            n_valid = feats.shape[1]
            padded = pad_frames(feats, self.pick_bucket(n_valid))
        with _stage(timings, "encoder"):
            enc = self.backend.encode(padded, n_valid)
        n_enc = encoder_frames(n_valid, self.bundle.subsampling_stages)
        with _stage(timings, "decoder"):
            result = greedy_decode(self.backend, enc, n_enc, prompt, budget, options, on_token)
        return prompt, result

    def warm_up(self) -> None:
        """Run every encoder bucket and a few decoder steps once, so the first caption pays no load or compile
        cost (Core ML compiles for the Neural Engine on first use)."""
        n_mels = self.features.n_mels
        dynamic = self.backend.spec.dynamic_encoder is not None  # one session: the full window warms it
        *smaller, full = (self.bundle.window_frames,) if dynamic else self.bundle.buckets
        for frames in smaller:
            self.backend.encode(np.zeros((1, n_mels, frames), np.float32), frames)
        enc = self.backend.encode(np.zeros((1, n_mels, full), np.float32), full)
        prompt = build_prompt(self.bundle, self.tokenizer, next(iter(self.bundle.languages)), True)
        # two tokens: the first from the prompt's prefill (where the backend has one), the second from a step
        greedy_decode(self.backend, enc, encoder_frames(full, self.bundle.subsampling_stages), prompt, 2,
                      DecodeOptions(ignore_eos=True))

    def windows(self, samples: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
        """Split audio longer than the model's window, or than its token budget carries (daemon.model.budget),
        at the quietest point near each boundary."""
        sr = self.sample_rate
        b = self.bundle
        window_s = max_segment_seconds(b.max_new_tokens, b.max_window_seconds)
        return split_windows(samples, round(window_s * sr),
                             round(split_search_seconds(b.split_search_seconds, window_s) * sr),
                             b.split_window_samples)

    def transcribe(self, samples: npt.NDArray[np.float32], options: DecodeOptions,
                   timings: dict[str, float] | None = None,
                   spans: list[tuple[int, int]] | None = None) -> Iterator[Segment]:
        """Transcribe audio of any length, one Segment per window, in order.

        timings: when given, seconds per stage are added to it ("features", "encoder", "decoder", "detokenize").
        spans: when given, the [start, end) sample spans to transcribe (for example the speech segments that
            daemon.audio.vad.speech_spans finds, as `serve` cuts them) instead of windows of everything (≤ 35 s, or
            shorter where the token budget holds less speech: daemon.model.budget).
        """
        if samples.shape[0] == 0:
            raise AudioError("the audio is empty")
        sr = self.sample_rate
        spans = self.windows(samples) if spans is None else spans
        for start, end in spans:
            _, result = self.transcribe_window(samples[start:end], options, timings=timings)
            with _stage(timings, "detokenize"):
                text = self.tokenizer.decode(result.tokens)
            yield Segment(start / sr, end / sr, text, options.language,
                          result.tokens, result.logprobs, result.stop_reason)


@contextmanager
def _stage(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall time (perf_counter) of the block to timings[name]; nothing when timings is None."""
    if timings is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


def load_transcriber(model: str | Path | Bundle, backend: str | None = None, dither: float | None = None,
                     verify: bool = False, compute_units: str = "all") -> Transcriber:
    """Load a bundle (folder or already validated) with its tokenizer and a backend (None: the default here);
    `compute_units` selects Core ML's processors (all, cpu_and_ne, cpu_and_gpu, cpu_only).

    The checksums of the files this backend uses are verified first; files verified before and unchanged since
    (same size and mtime) are skipped unless `verify` forces hashing them all again.

    Raises:
        BundleError: a malformed bundle, a missing file, or a checksum mismatch.
        ConfigError, BackendError: an unknown backend, or one that cannot run here.
    """
    from daemon.model.backends import default_backend, files_of, get_backend
    from daemon.model.checksums import verify_files
    from daemon.model.fluidaudio import load_model

    bundle = model if isinstance(model, Bundle) else load_model(model)  # a bundle or a FluidInference folder
    name = backend or default_backend(bundle)
    if files_of(name) in bundle.backends:  # otherwise get_backend names what is wrong
        verify_files(bundle, files_of(name), force=verify)
    tokenizer = open_tokenizer(bundle.tokenizer_path)
    return Transcriber(bundle, get_backend(bundle, name, compute_units), tokenizer, dither)
