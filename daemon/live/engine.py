"""The live caption engine: frames → VAD segments → partial and final decodes in one worker thread → events.

One model, one worker thread (a one-thread executor), so inference never runs on the event loop and never
twice at once. Jobs wait in two lanes: finals (never dropped, first served) and at most one pending partial
(newer audio replaces an older request, so partials coalesce when the worker falls behind). A partial that
comes back after its segment closed is discarded; the final is a fresh decode of the closed segment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from daemon.audio.vad import SegmentClosed, SegmentDropped, Segmenter, SegmentOpened
from daemon.live.config import DaemonConfig
from daemon.live.messages import Event, Final, Partial, Settings, SpeechStarted, SpeechStopped, Status
from daemon.model.decode import DecodeOptions, DecodeResult
from daemon.model.transcriber import Transcriber

log = logging.getLogger(__name__)

SILENT_MIC_S = 5.0  # this much exact digital silence from a microphone means macOS withheld permission


@dataclass
class _Open:
    """Caption state of the segment being spoken."""

    segment: int
    start: int  # sample index on the stream clock
    stable: list[str] = field(default_factory=list)  # words two consecutive decodes agreed on; only grows
    previous: list[str] | None = None  # words of the last partial decode
    submitted_speech: int = -1  # speech frames in the segment when the last partial was requested


@dataclass(frozen=True)
class _Job:
    kind: str  # "partial" | "final"
    segment: int
    start: int
    end: int
    audio: npt.NDArray[np.float32]
    options: DecodeOptions
    speech_frames: int = 0


def common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class CaptionEngine:
    """Turns audio frames into caption events; `emit` delivers each event (to clients and transcripts)."""

    def __init__(self, config: DaemonConfig, transcriber: Transcriber, emit: Callable[[Event], None],
                 sample_rate: int = 16000, is_speech: Callable[[bytes, int], bool] | None = None) -> None:
        self.config = config
        self.transcriber = transcriber
        self.emit = emit
        self.sample_rate = sample_rate
        self.settings = Settings(config.language, config.punctuation, paused=False)
        self.segmenter = Segmenter(config.vad_options(), is_speech)  # is_speech: tests inject one
        self._options = config.decode_options()
        self._open: _Open | None = None
        self._finals: deque[_Job] = deque()
        self._partial: _Job | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._zero_run = 0
        self._warned_silent = False
        self.samples_in = 0
        self._closed_at: dict[int, float] = {}  # segment → monotonic time the VAD closed it
        self.final_latencies: deque[float] = deque(maxlen=1000)  # s from segment close to final emitted

    # -- settings and commands -------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._finals) + (self._partial is not None)

    def decode_options(self) -> DecodeOptions:
        return replace(self._options, language=self.settings.language, punctuation=self.settings.punctuation)

    def configure(self, language: str | None, punctuation: bool | None, announce: bool = True) -> Settings:
        """Change the daemon-wide language/punctuation (validated against the bundle); announce it."""
        from daemon.model.decode import build_prompt

        lang = self.settings.language if language is None else language
        pnc = self.settings.punctuation if punctuation is None else punctuation
        build_prompt(self.transcriber.bundle, self.transcriber.tokenizer, lang, pnc)  # raises ConfigError
        self.settings = replace(self.settings, language=lang, punctuation=pnc)
        if announce:
            self.emit(Status("info", "settings_changed", f"language {lang}, punctuation {'on' if pnc else 'off'}",
                             self.settings))
        return self.settings

    def finalize(self) -> None:
        """Close the open segment now (its final follows)."""
        self._handle(self.segmenter.flush())

    def pause(self) -> None:
        if not self.settings.paused:
            self.finalize()
            self.settings = replace(self.settings, paused=True)
            self.emit(Status("info", "paused", "captioning paused", self.settings))

    def resume(self) -> None:
        if self.settings.paused:
            self.settings = replace(self.settings, paused=False)
            self.emit(Status("info", "resumed", "captioning resumed", self.settings))

    # -- audio in ---------------------------------------------------------------------------------------------

    def push(self, frame: npt.NDArray[np.float32], check_silent_mic: bool = False) -> None:
        """One 30 ms frame from the source."""
        self.samples_in += len(frame)
        if check_silent_mic:
            self._check_silence(frame)
        if self.settings.paused:
            return
        self._handle(self.segmenter.push(frame))

    def _check_silence(self, frame: npt.NDArray[np.float32]) -> None:
        if frame.any():
            self._zero_run, self._warned_silent = 0, False
            return
        self._zero_run += len(frame)
        if not self._warned_silent and self._zero_run >= SILENT_MIC_S * self.sample_rate:
            self._warned_silent = True
            msg = (f"the microphone has delivered only digital silence for {SILENT_MIC_S:.0f} s: on macOS, allow "
                   "microphone access for this terminal (System Settings → Privacy & Security → Microphone)")
            log.warning(msg)
            self.emit(Status("warning", "silent_microphone", msg))

    def _handle(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, SegmentOpened):
                self._open = _Open(ev.segment, ev.start)
                self.emit(SpeechStarted(ev.segment, ev.start / self.sample_rate))
            elif isinstance(ev, SegmentClosed):
                self._close(ev)
            elif isinstance(ev, SegmentDropped):
                log.debug("dropped a %.2f s blip", (ev.end - ev.start) / self.sample_rate)

    def _close(self, ev: SegmentClosed) -> None:
        self._open = None
        if self._partial is not None and self._partial.segment == ev.segment:
            self._partial = None
        self.emit(SpeechStopped(ev.segment, ev.end / self.sample_rate))
        self._finals.append(_Job("final", ev.segment, ev.start, ev.end, ev.audio, self.decode_options()))
        self._closed_at[ev.segment] = time.monotonic()
        self._wake.set()

    def tick(self) -> None:
        """Called every partial interval: request a partial when the open segment has new speech."""
        seg = self._open
        if seg is None or not self.segmenter.is_open or self.segmenter.current_segment != seg.segment:
            return
        speech = self.segmenter.speech_frames_total
        if speech == seg.submitted_speech:
            return
        seg.submitted_speech = speech
        audio = self.segmenter.current_audio()
        self._partial = _Job("partial", seg.segment, seg.start, seg.start + len(audio), audio,
                             self.decode_options(), speech)
        self._wake.set()

    # -- the worker -------------------------------------------------------------------------------------------

    async def run_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._finals or self._partial is not None:
                job = self._finals.popleft() if self._finals else self._partial
                if job is self._partial:
                    self._partial = None
                self._idle.clear()
                try:
                    result = await loop.run_in_executor(self._pool, self._decode, job)
                except Exception:  # a failed decode must not stop captions for everyone
                    log.exception("decode of segment %d failed", job.segment)
                    result = None
                finally:
                    self._idle.set()
                self._deliver(job, result)

    def _decode(self, job: _Job) -> tuple[str, DecodeResult]:
        if len(job.audio) < 2 * 160:
            return "", DecodeResult((), (), "eos")
        _, result = self.transcriber.transcribe_window(job.audio, job.options)
        return self.transcriber.tokenizer.decode(result.tokens), result

    def _deliver(self, job: _Job, result: tuple[str, DecodeResult] | None) -> None:
        sr = self.sample_rate
        if job.kind == "final":
            text, res = result if result is not None else ("", DecodeResult((), (), "error"))
            self.emit(Final(job.segment, job.start / sr, job.end / sr, text, job.options.language,
                            res.stop_reason))
            closed = self._closed_at.pop(job.segment, None)
            if closed is not None:
                self.final_latencies.append(time.monotonic() - closed)
            return
        seg = self._open
        if result is None or seg is None or seg.segment != job.segment:
            return  # the segment closed meanwhile: its final replaces this partial
        words = result[0].split()
        if seg.previous is not None:
            agreed = common_prefix(seg.previous, words)
            if agreed > len(seg.stable) and seg.previous[: len(seg.stable)] == seg.stable:
                seg.stable = words[:agreed]
        seg.previous = words
        rest = words[common_prefix(seg.stable, words):]
        stable = " ".join(seg.stable)
        unstable = (" " if stable and rest else "") + " ".join(rest)  # stable + unstable is the whole text
        self.emit(Partial(job.segment, job.start / sr, stable, unstable))

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every queued final has been decoded and emitted."""
        deadline = time.monotonic() + timeout
        while (self._finals or not self._idle.is_set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
