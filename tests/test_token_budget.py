"""Issue 14, acceptance 2: a transcript that needs more tokens than the model's budget (98 for FluidInference's files).

- The cut: segments are at most the bundle's max_new_tokens / 7 tokens-per-second long (14 s for 98, the 35 s
  window for 256), in `serve` (DaemonConfig.vad_options), in `transcribe --vad` and in `transcribe`'s windows.
- The live segmenter holds to it on real speech (webrtcvad on espeak-ng speech without pauses).
- Through the live engine: speech at the densest measured rate (5.4 tokens/s) stays under the cap in every final;
  speech denser than the design rate reaches the cap and its final says so (stop_reason max_new_tokens).
- With the real (demo) model, a window that reaches the bundle's cap ends with stop_reason max_new_tokens, keeps
  exactly the tokens greedy decoding gave before the cap, and logs a warning: never silently.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from fake_model import SR, ScriptedModel, frames, loud, silence, speech

from daemon.audio.vad import VadOptions, speech_spans
from daemon.live.config import DaemonConfig, window_limits
from daemon.live.engine import CaptionEngine
from daemon.live.messages import Final
from daemon.model.bundle import load_bundle
from daemon.model.decode import DecodeOptions, DecodeResult
from daemon.model.locate import CHECKOUT_MODEL
from daemon.model.transcriber import load_transcriber
from devtools.speech import espeak, heldout_sentences

FLUID_BUDGET = 98  # FluidInference's decoders: 108 cache positions − the 10-token prompt


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    return load_transcriber(CHECKOUT_MODEL, "onnx")


def fluid_like(bundle, max_new_tokens: int = FLUID_BUDGET):  # type: ignore[no-untyped-def]
    """The demo bundle with FluidInference's budget (their window is the same 35 s, 5 s cut search)."""
    return replace(bundle, max_new_tokens=max_new_tokens)


@pytest.mark.parametrize(("budget", "window_s", "segment_s", "search_s"), [
    (98, 35.0, 14.0, 5.0),   # FluidInference: 98 / 7
    (256, 35.0, 35.0, 5.0),  # our exports: 256 / 7 = 36.6 s > the window
    (49, 35.0, 7.0, 3.5),    # a smaller budget: the cut search shrinks to half the segment
    (98, 10.0, 10.0, 5.0),   # a window shorter than the budget's
    (1, 35.0, 2.0, 1.0),     # a tiny budget does not cut speech into slivers
])
def test_the_cut_follows_the_token_budget(demo, budget: int, window_s: float, segment_s: float,  # type: ignore[no-untyped-def]
                                          search_s: float) -> None:
    bundle = replace(demo.bundle, max_new_tokens=budget, max_window_seconds=window_s)
    o = DaemonConfig(model="m").vad_options(bundle)
    assert (o.max_segment_s, o.split_search_s) == pytest.approx((segment_s, search_s), abs=1e-9)


def test_serve_and_transcribe_cut_fluidinference_speech_at_14_s(demo) -> None:  # type: ignore[no-untyped-def]
    """`serve` and `transcribe --vad` (window_limits) and `transcribe` without --vad (Transcriber.windows) take
    the same limit from the bundle's budget (--max-new-tokens limits tokens only); the demo bundle keeps 35 s."""
    assert load_bundle(CHECKOUT_MODEL).max_new_tokens == 256
    assert DaemonConfig(model="m").vad_options(demo.bundle).max_segment_s == 35.0
    fluid = fluid_like(demo.bundle)
    assert DaemonConfig(model="m").vad_options(fluid).max_segment_s == 14.0
    assert DaemonConfig(model="m", max_new_tokens=70).vad_options(fluid).max_segment_s == 14.0  # tokens, not cut
    assert window_limits(fluid)["max_segment_s"] == 14.0
    spans = replace_bundle(demo, fluid).windows(np.zeros(60 * SR, np.float32))  # silence: cut at the first block
    assert [round((b - a) / SR, 3) for a, b in spans] == [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 6.0]  # of each search span
    assert [round((b - a) / SR, 3) for a, b in demo.windows(np.zeros(60 * SR, np.float32))] == [30.0, 30.0]


def replace_bundle(tr, bundle):  # type: ignore[no-untyped-def]
    """A Transcriber sharing tr's backend and tokenizer, with another bundle (only the budget differs)."""
    return type(tr)(bundle, tr.backend, tr.tokenizer)


def continuous_speech(seconds: float) -> np.ndarray:
    """espeak-ng sentences with their own silences trimmed and 0.15 s between them: no pause long enough (600 ms)
    to end a segment, so only the length limit cuts."""
    parts: list[np.ndarray] = [np.zeros(SR // 2, np.float32)]
    gap = np.zeros(int(0.15 * SR), np.float32)
    sentences = heldout_sentences(40, "en")
    while sum(len(p) for p in parts) < seconds * SR:
        x = espeak(sentences[len(parts) % len(sentences)], "en-us", 170)
        loud_at = np.flatnonzero(np.abs(x) > 0.01)
        parts += [x[loud_at[0]:loud_at[-1] + 1] * 0.8, gap]
    return np.concatenate([*parts, np.zeros(SR, np.float32)])


def test_the_live_segmenter_cuts_continuous_speech_at_the_limit(demo) -> None:  # type: ignore[no-untyped-def]
    """Real webrtcvad and energy gate on 45 s of speech: every segment ≤ 14 s, cut in its last 5 s (≥ 9 s, but
    the last), contiguous — no sample lost or repeated across the cuts."""
    audio = continuous_speech(45)
    o = VadOptions(**window_limits(fluid_like(demo.bundle)))
    spans = speech_spans(audio, o)
    lengths = [(b - a) / SR for a, b in spans]
    assert len(spans) >= 4 and max(lengths) <= 14.0
    assert min(lengths[:-1]) >= 9.0 - o.frame_ms / 1000
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(spans))


class RateModel(ScriptedModel):
    """A model whose transcript needs `rate` tokens per second of audio, decoded under its bundle's budget the
    way greedy_decode is: at most max_new_tokens, then stop_reason max_new_tokens."""

    def __init__(self, rate: float, budget: int) -> None:
        super().__init__(jitter_last=False)
        self.rate = rate
        self.bundle = SimpleNamespace(**{**vars(self.bundle), "max_new_tokens": budget})

    def transcribe_window(self, audio: np.ndarray, options: object) -> tuple[list[int], DecodeResult]:
        self.calls.append(len(audio))
        budget = getattr(options, "max_new_tokens", None) or self.bundle.max_new_tokens
        need = round(self.rate * len(audio) / SR)
        ids = tuple(self.tokenizer.encode(" ".join(["word"] * min(need, budget))))
        return [], DecodeResult(ids, (), "eos" if need <= budget else "max_new_tokens")


async def live_finals(model: RateModel, audio: np.ndarray) -> list[Final]:
    events: list[object] = []
    engine = CaptionEngine(DaemonConfig(), model, events.append, is_speech=loud)
    worker = asyncio.create_task(engine.run_worker())
    for i, frame in enumerate(frames(audio)):
        engine.push(frame)
        if i % 20 == 0:
            engine.tick()
            await asyncio.sleep(0)
    engine.finalize()
    await asyncio.wait_for(engine.drain(), 30)
    worker.cancel()
    return [e for e in events if isinstance(e, Final)]


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A tone whose loudness changes every 100 ms (all of it speech to the test's detector), so the quietest
    block of a cut's search span, and the cut, fall anywhere in it."""
    rng = np.random.default_rng(seed)
    gain = np.repeat(rng.uniform(0.5, 1.0, int(seconds * 10)), SR // 10)
    return (speech(seconds) * gain).astype(np.float32)


@pytest.mark.parametrize("rate", [5.4, 9.0])
def test_live_finals_under_the_98_token_budget(rate: float) -> None:
    """90 s of speech without a pause through the live engine with a 98-token model: finals are 9 to 14 s long.
    At 5.4 tokens/s (the densest measured with the real tokenizer) the longest needs 76 tokens: every final ends
    at EOS. At 9 tokens/s (denser than the 7/s design rate) a final longer than 98 / 9 = 10.9 s needs more than
    98 tokens: it carries 98 and is marked max_new_tokens; the shorter ones end at EOS."""
    model = RateModel(rate, FLUID_BUDGET)
    finals = asyncio.run(live_finals(model, np.concatenate([silence(0.5), speech_like(90.0, 1), silence(1.5)])))
    lengths = [f.end - f.start for f in finals]
    assert len(finals) >= 7 and max(lengths) <= 14.0 + 1e-9 and min(lengths[:-1]) >= 9.0 - 0.03
    assert sum(lengths) == pytest.approx(90.0 + 0.3 + 0.6, abs=0.1)  # + pre-roll and the silence that ends it
    for f, seconds in zip(finals, lengths, strict=True):
        capped = round(rate * seconds) > FLUID_BUDGET
        assert f.stop_reason == ("max_new_tokens" if capped else "eos"), (seconds, f.stop_reason)
        assert len(f.text.split()) == min(round(rate * seconds), FLUID_BUDGET)
    assert any(f.stop_reason == "max_new_tokens" for f in finals) == (rate > 7)


def test_a_window_that_still_needs_more_ends_at_the_cap_with_a_warning(
        demo, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The real decoder (demo model): a sentence whose transcript takes n tokens, decoded by a bundle whose cap is
    n − 5: stop_reason max_new_tokens, the first n − 5 tokens of the full transcript, and a logged warning."""
    audio = espeak(heldout_sentences(1, "en")[0], "en-us", 150)
    _, full = demo.transcribe_window(audio, DecodeOptions(language="en"))
    assert full.stop_reason == "eos" and len(full.tokens) >= 15
    capped_model = load_transcriber(fluid_like(demo.bundle, len(full.tokens) - 5), "onnx")
    with caplog.at_level(logging.WARNING, logger="daemon.model.decode"):
        _, capped = capped_model.transcribe_window(audio, DecodeOptions(language="en"))
    assert capped.stop_reason == "max_new_tokens"
    assert capped.tokens == full.tokens[: len(full.tokens) - 5]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "token cap" in warning.getMessage() and "cut short" in warning.getMessage()
