"""The live caption engine: frames → VAD segments → partial and final decodes, one at a time, in a thread → events.

The worker decodes one job at a time off the event loop, so inference never blocks the loop and never runs twice
at once. Jobs wait in a JobQueue (daemon.live.jobs): finals are never dropped, partials coalesce. A partial that
comes back after its segment closed is discarded; the final is a fresh decode of the closed segment. The text of
partials follows StablePrefix (daemon.live.captions). Delivery is isolated: an `emit` that raises is logged
(once per kind) and kept in `warnings`, and captions go on. Commands cannot flood: settings changes are
announced at most once per ANNOUNCE_S (the latest wins), and `finalize` never drops speech as a blip.

A model slower than real time is visible and bounded. Partials adapt: one is requested only while the worker is
idle, no final waits, and PARTIAL_BACKOFF × the last decode's time has passed since that decode ended, so
partials take at most two thirds of the worker and never queue. A tick that finds the model without time leaves
the partial owed: the worker asks for it the moment the pause is over (a final that comes first goes first). `lag_seconds` is how late captions are: the time
since the segment of the oldest final not yet delivered closed (0 when every final is out; /health shows it).
When it reaches LAG_WARN_S with finals queued behind the one decoding, a `falling_behind` warning goes out (with
the lag), and `caught_up` once every final is out. Finals are never dropped, whatever the lag.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import anyio
import numpy as np
import numpy.typing as npt

from daemon.audio.vad import IsSpeech, SegmentClosed, SegmentDropped, Segmenter, SegmentEvent, SegmentOpened
from daemon.live.captions import StablePrefix, partial_text
from daemon.live.config import DaemonConfig
from daemon.live.jobs import Job, JobQueue
from daemon.live.messages import Event, Final, Partial, Settings, SpeechStarted, SpeechStopped, Status
from daemon.model.decode import DecodeOptions, DecodeResult, build_prompt
from daemon.model.transcriber import Transcriber

log = logging.getLogger(__name__)

Decoded = tuple[str, DecodeResult]  # text, and the decoder's result
ANNOUNCE_S = 0.5  # settings-change statuses go out at most this often; changes in between are coalesced
PARTIAL_BACKOFF = 0.5  # the next partial waits at least this many times the last decode's duration after it
LAG_WARN_S = 2.0  # captions this late, with finals queued: falling_behind


@dataclass
class _Open:
    """Caption state of the segment being spoken."""

    segment: int
    start: int  # sample index on the stream clock
    prefix: StablePrefix = field(default_factory=StablePrefix)
    submitted_speech: int = -1  # speech frames in the segment when the last partial was requested


class CaptionEngine:
    """Turns audio frames into caption events; `emit` delivers each event (to clients and transcripts)."""

    def __init__(self, config: DaemonConfig, transcriber: Transcriber, emit: Callable[[Event], None],
                 is_speech: IsSpeech | None = None) -> None:
        self.transcriber = transcriber
        self.emit = emit
        self.sample_rate = transcriber.sample_rate
        self._min_samples = 2 * transcriber.features.hop_length  # shorter audio has no feature frame to decode
        self.settings = Settings(config.language, config.punctuation, paused=False)
        self.segmenter = Segmenter(config.vad_options(transcriber.bundle), is_speech)  # is_speech: tests inject one
        self._options = config.decode_options()
        self._open: _Open | None = None
        self.jobs = JobQueue()
        self._closed_at: dict[int, float] = {}  # segment → monotonic time the VAD closed it
        self.final_latencies: deque[float] = deque(maxlen=1000)  # s from segment close to final emitted
        self.warnings: list[str] = []  # delivery failures, one per kind
        self._failed_kinds: set[str] = set()
        self._pending_status: Status | None = None  # a settings change waiting for ANNOUNCE_S to pass
        self._announced_at = float("-inf")
        self._partial_due = float("-inf")  # monotonic time before which no partial is decoded
        self._partial_owed = False  # a tick wanted a partial while the model had no time for it
        self.last_decode_s = 0.0  # how long the last decode took
        self.lag_warn_s = LAG_WARN_S
        self.problems: dict[str, str] = {}  # code → message while it lasts (falling_behind), for /health

    # -- settings and commands -------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self.jobs.depth

    @property
    def lag_seconds(self) -> float:
        """How late captions are: seconds since the segment of the oldest final not yet delivered closed
        (0 when every final is out)."""
        oldest = next(iter(self._closed_at.values()), None)  # finals are delivered in the order they closed
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    def decode_options(self) -> DecodeOptions:
        return replace(self._options, language=self.settings.language, punctuation=self.settings.punctuation)

    def configure(self, language: str | None, punctuation: bool | None, announce: bool = True) -> Settings:
        """Change the daemon-wide language/punctuation (validated against the bundle); announce it."""
        lang = self.settings.language if language is None else language
        pnc = self.settings.punctuation if punctuation is None else punctuation
        build_prompt(self.transcriber.bundle, self.transcriber.tokenizer, lang, pnc)  # raises ConfigError
        self.settings = replace(self.settings, language=lang, punctuation=pnc)
        if announce:
            self._announce(Status("info", "settings_changed",
                                  f"language {lang}, punctuation {'on' if pnc else 'off'}", self.settings))
        return self.settings

    def finalize(self) -> None:
        """Close the open segment now (its final follows). A segment still short of min_speech_ms stays open:
        closing it would drop it as a blip, and a client asking for a final never means to lose speech."""
        if self.segmenter.is_open and self.segmenter.current_segment is None:
            return
        self._handle(self.segmenter.flush())

    def pause(self) -> None:
        if not self.settings.paused:
            self.finalize()
            self.settings = replace(self.settings, paused=True)
            self._announce(Status("info", "paused", "captioning paused", self.settings))

    def resume(self) -> None:
        if self.settings.paused:
            self.settings = replace(self.settings, paused=False)
            self._announce(Status("info", "resumed", "captioning resumed", self.settings))

    def _announce(self, status: Status) -> None:
        """Emit a settings status now, or, within ANNOUNCE_S of the last one, at a later tick (the latest
        status then stands for all the changes in between: it carries the settings as they are)."""
        self._pending_status = status
        self._announce_due()

    def _announce_due(self) -> None:
        status, now = self._pending_status, time.monotonic()
        if status is None or now - self._announced_at < ANNOUNCE_S:
            return
        self._pending_status, self._announced_at = None, now
        self._emit(replace(status, settings=self.settings))

    # -- audio in ---------------------------------------------------------------------------------------------

    def push(self, frame: npt.NDArray[np.float32]) -> None:
        """One frame from the source. While paused the audio is dropped, but the stream clock runs on."""
        if self.settings.paused:
            self._handle(self.segmenter.skip(len(frame)))  # pause() flushed already: normally no events
            return
        self._handle(self.segmenter.push(frame))

    def push_block(self, samples: npt.NDArray[np.float32], speech: npt.NDArray[np.bool_] | None = None) -> None:
        """Consecutive frames from the source (float32, whole frames), with the speech decision per frame when
        the capture thread made it (None: the segmenter decides). Paused: dropped, the clock runs on."""
        if self.settings.paused:
            self._handle(self.segmenter.skip(len(samples)))
            return
        self._handle(self.segmenter.push_block(samples, speech))

    def _handle(self, events: list[SegmentEvent]) -> None:
        for ev in events:
            if isinstance(ev, SegmentOpened):
                self._open = _Open(ev.segment, ev.start)
                self._emit(SpeechStarted(ev.segment, ev.start / self.sample_rate))
            elif isinstance(ev, SegmentClosed):
                self._close(ev)
            elif isinstance(ev, SegmentDropped):
                log.debug("dropped a %.2f s blip", (ev.end - ev.start) / self.sample_rate)

    def _close(self, ev: SegmentClosed) -> None:
        self._open = None
        self._partial_owed = False
        self.jobs.drop_partial(ev.segment)
        self._emit(SpeechStopped(ev.segment, ev.end / self.sample_rate))
        self._closed_at[ev.segment] = time.monotonic()
        self.jobs.put_final(Job("final", ev.segment, ev.start, ev.audio, self.decode_options()))

    def tick(self) -> None:
        """Called every partial interval: announce settings changes that waited, and a change of the lag; request
        a partial when the open segment has new speech and the model has time for it (else it is owed)."""
        self._announce_due()
        self._check_lag()
        if self.jobs.busy or self.jobs.finals_waiting or time.monotonic() < self._partial_due:
            self._partial_owed = self._has_new_speech()  # no partial queues behind the model: it is asked for later
            self.jobs.poke()
            return
        self._offer_partial()

    def _has_new_speech(self) -> bool:
        seg = self._open
        return (seg is not None and self.segmenter.current_segment == seg.segment
                and self.segmenter.speech_frames_total != seg.submitted_speech)

    def _offer_partial(self) -> None:
        """A partial of the open segment's audio so far, if it has speech no partial has seen yet."""
        if not self._has_new_speech():
            return
        seg = self._open
        assert seg is not None
        seg.submitted_speech = self.segmenter.speech_frames_total
        self.jobs.offer_partial(Job("partial", seg.segment, seg.start, self.segmenter.current_audio(),
                                    self.decode_options()))

    # -- the worker -------------------------------------------------------------------------------------------

    async def run_worker(self) -> None:
        """Decode jobs one at a time, forever (cancel to stop)."""
        while True:
            job = await self._next_job()
            try:
                t0 = time.monotonic()
                try:
                    result: Decoded | None = await anyio.to_thread.run_sync(self._decode, job)
                except Exception:  # a failed decode must not stop captions for everyone
                    log.exception("decode of segment %d failed", job.segment)
                    result = None
                self._decoded(time.monotonic() - t0)
                self._deliver(job, result)
                self._check_lag()
            finally:
                self.jobs.done()

    async def _next_job(self) -> Job:
        """The next job (finals first); meanwhile, a partial owed to a tick is offered once its pause is over."""
        while True:
            owed, wait = self._partial_owed, self._partial_due - time.monotonic()
            if owed and wait <= 0 and not self.jobs.finals_waiting:
                self._partial_owed = False
                self._offer_partial()
            elif self.jobs.depth:
                return await self.jobs.get()
            else:
                with anyio.move_on_after(wait if owed else math.inf):  # the pause, or a job, or a new debt
                    await self.jobs.wait_until(functools.partial(self._job_or_debt_changed, owed))

    def _job_or_debt_changed(self, owed: bool) -> bool:
        return self.jobs.depth > 0 or self._partial_owed != owed

    def _decoded(self, seconds: float) -> None:
        """A decode took `seconds`: no partial before PARTIAL_BACKOFF × that from now."""
        self.last_decode_s = seconds
        self._partial_due = time.monotonic() + PARTIAL_BACKOFF * seconds

    def _check_lag(self) -> None:
        """Warn once when captions fall behind (finals queue up and are LAG_WARN_S late); say when caught up."""
        lag = self.lag_seconds
        if "falling_behind" not in self.problems:
            if lag >= self.lag_warn_s and self.jobs.finals_waiting:
                msg = (f"captions are {lag:.1f} s behind the audio: the model decodes slower than real time "
                       f"({len(self._closed_at)} finals to go); partials come less often, "
                       "every final will come")
                self.problems["falling_behind"] = msg
                log.warning(msg)
                self._emit(Status("warning", "falling_behind", msg, lag_s=lag))
        elif not self._closed_at:
            del self.problems["falling_behind"]
            log.info("captions have caught up with the audio")
            self._emit(Status("info", "caught_up", "captions have caught up with the audio", lag_s=0.0))

    async def drain(self) -> None:
        """Wait until every final queued so far has been decoded and emitted (no time limit: the caller sets one)."""
        await self.jobs.join()

    def _decode(self, job: Job) -> Decoded:
        if len(job.audio) < self._min_samples:
            return "", DecodeResult((), (), "eos")
        _, result = self.transcriber.transcribe_window(job.audio, job.options)
        return self.transcriber.tokenizer.decode(result.tokens), result

    def _deliver(self, job: Job, result: Decoded | None) -> None:
        sr = self.sample_rate
        if job.kind == "final":
            text, res = result if result is not None else ("", DecodeResult((), (), "error"))
            self._emit(Final(job.segment, job.start / sr, job.end / sr, text, job.options.language, res.stop_reason))
            closed = self._closed_at.pop(job.segment, None)
            if closed is not None:
                self.final_latencies.append(time.monotonic() - closed)
            return
        seg = self._open
        if result is None or seg is None or seg.segment != job.segment:
            return  # the segment closed meanwhile: its final replaces this partial
        stable, unstable = partial_text(*seg.prefix.update(result[0].split()))
        self._emit(Partial(job.segment, job.start / sr, stable, unstable))

    def _emit(self, event: Event) -> None:
        """Deliver an event; a failure is logged (with its traceback once per kind) and never stops captions."""
        try:
            self.emit(event)
        except Exception as e:
            kind = f"{type(e).__name__} delivering {event.type}"
            if kind in self._failed_kinds:
                log.debug("%s: %s", kind, e)
                return
            self._failed_kinds.add(kind)
            self.warnings.append(f"{kind}: {e}")
            log.exception("%s (captions continue; further failures of this kind are not logged)", kind)
