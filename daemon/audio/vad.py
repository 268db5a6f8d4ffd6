"""Voice activity segmenter (webrtcvad + an energy gate): frames in, segment events out, no I/O.

State machine, one fixed-size frame per `Segmenter.push`:

    idle ──speech frame──▶ pending ──min_speech_frames speech frames──▶ open (SegmentOpened)
      ▲                       │                                            │
      └── SegmentDropped ◀────┴── end_silence_frames non-speech in a row ──┴──▶ SegmentClosed("silence")

- idle keeps only a pre-roll ring (the last pre_roll_frames of audio), so a segment starts before its
  first speech frame and the first word is not clipped. Silence and noise never produce an event.
- pending and open keep every frame. A pending segment that goes quiet is dropped (a blip), and its id is
  not used up: segment ids count 0, 1, 2, ... over emitted segments and are assigned at SegmentOpened.
- An open segment longer than max_segment_samples is cut at the quietest block of its last split_search_s,
  the reference's rule (daemon.audio.windows.split_windows); the audio after the cut becomes the next segment, with
  SegmentOpened emitted at once since speech is ongoing. Only if everything after the cut lies in the
  current run of non-speech frames does the segmenter go idle instead (that tail is kept as pre-roll).
- Pre-roll never reaches back before the end of the previous emitted segment, so emitted segments do not
  overlap, and across a max-length cut their audio is contiguous (no sample lost or repeated).

All positions are sample indices on one stream clock: 0 is the first sample of the first frame pushed.

The speech decision (SpeechDetector: an energy gate, then webrtcvad) works on blocks of frames, and a caller may
make it elsewhere and pass the flags in: a capture thread classifies audio where it arrives, and
`Segmenter.push_block` takes a run of non-speech frames while idle in one step (the pre-roll ring and the clock
move, nothing else), so silence costs no per-frame Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import webrtcvad

from daemon.audio import FRAME_MS, SAMPLE_RATE
from daemon.audio.windows import quietest_block

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)  # what webrtcvad accepts
VAD_FRAME_MS = (10, 20, 30)

IsSpeech = Callable[[bytes, int], bool]  # (16-bit little-endian PCM frame, sample_rate) -> speech?


@dataclass(frozen=True)
class VadOptions:
    """The segmenter's settings; these defaults are the only copy (DaemonConfig and the CLI help read them)."""

    # detector
    aggressiveness: int = 3  # webrtcvad mode, 0 (lenient) to 3 (strict)
    frame_ms: int = FRAME_MS  # 10, 20 or 30: the frame size push() takes
    min_level_dbfs: float = -45.0  # frames with RMS below this (re 1.0) are non-speech; -inf disables
    sample_rate: int = SAMPLE_RATE  # 8000, 16000, 32000 or 48000
    # segmenting (times are rounded up to whole frames)
    pre_roll_ms: int = 300  # audio kept before the first speech frame
    end_silence_ms: int = 600  # this much non-speech in a row closes a segment
    min_speech_ms: int = 250  # speech needed before SegmentOpened; shorter segments are dropped
    # long segments, cut like the reference (daemon.audio.windows.split_windows)
    max_segment_s: float = 35.0
    split_search_s: float = 5.0  # the cut is in the last split_search_s of a full segment
    split_block_samples: int = 1600  # ... at the start of its quietest block of this size

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {self.aggressiveness}")
        if self.frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {VAD_FRAME_MS} (webrtcvad), not {self.frame_ms}")
        if self.sample_rate not in VAD_SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {VAD_SAMPLE_RATES} (webrtcvad), not {self.sample_rate}")
        if math.isnan(self.min_level_dbfs) or self.min_level_dbfs > 0:
            raise ValueError(f"min_level_dbfs must be ≤ 0 (or -inf), not {self.min_level_dbfs}")
        for name in ("pre_roll_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, not {getattr(self, name)}")
        if self.end_silence_ms <= 0:
            raise ValueError(f"end_silence_ms must be > 0, not {self.end_silence_ms}")
        if self.split_block_samples <= 0:
            raise ValueError(f"split_block_samples must be > 0, not {self.split_block_samples}")
        if self.split_search_samples <= 0:
            raise ValueError(f"split_search_s must be > 0, not {self.split_search_s}")
        # A segment must hold its pre-roll and first frame, and the audio left after a cut must fit in one.
        need = max(self.pre_roll_frames * self.frame_samples, self.split_search_samples) + self.frame_samples
        if self.max_segment_samples < need:
            raise ValueError(f"pre_roll_ms={self.pre_roll_ms} and split_search_s={self.split_search_s} do not fit "
                             f"a segment of max_segment_s={self.max_segment_s}: the longer of them plus one "
                             f"frame must fit")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def pre_roll_frames(self) -> int:
        return _ceil_div(self.pre_roll_ms, self.frame_ms)

    @property
    def end_silence_frames(self) -> int:
        return _ceil_div(self.end_silence_ms, self.frame_ms)

    @property
    def min_speech_frames(self) -> int:
        return _ceil_div(self.min_speech_ms, self.frame_ms)

    @property
    def max_segment_samples(self) -> int:
        return round(self.max_segment_s * self.sample_rate)

    @property
    def split_search_samples(self) -> int:
        return round(self.split_search_s * self.sample_rate)

    @property
    def min_level_rms(self) -> float:
        return float(10.0 ** (self.min_level_dbfs / 20.0))  # 0.0 for -inf: the gate never fires


@dataclass(frozen=True, slots=True)
class SegmentOpened:
    """Segment `segment` holds speech; its audio begins at sample `start` (pre-roll included)."""

    segment: int
    start: int


@dataclass(frozen=True, slots=True)
class SegmentClosed:
    """Segment `segment` is complete: samples [start, end), reason "silence", "max_length" or "flush"."""

    segment: int
    start: int
    end: int
    audio: npt.NDArray[np.float32] = field(repr=False, compare=False)  # float32 (end - start,), mono
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentDropped:
    """A segment closed before min_speech_ms of speech; no SegmentOpened was sent and its id is reused."""

    segment: int
    start: int
    end: int


SegmentEvent = SegmentOpened | SegmentClosed | SegmentDropped


class SpeechDetector:
    """The per-frame speech decision for a block of frames: the energy gate (one numpy reduction for the whole
    block), then the classifier on the frames that pass it, in order.

    webrtcvad keeps state from one frame to the next, so one detector serves one stream, fed in order.

    Args:
        options: the gate level, webrtcvad's aggressiveness, the frame size and sample rate.
        is_speech: frame classifier, called with 16-bit PCM bytes and the sample rate; by default webrtcvad at
            options.aggressiveness. It only sees frames that pass the energy gate.
    """

    def __init__(self, options: VadOptions, is_speech: IsSpeech | None = None) -> None:
        self.options = options
        self._is_speech = is_speech or webrtcvad.Vad(options.aggressiveness).is_speech
        self._min_energy = options.min_level_rms**2 * options.frame_samples  # the gate as a sum of squares

    def __call__(self, frames: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """float32 (n_frames, frame_samples) → bool (n_frames,): True for a speech frame."""
        # webrtcvad alone flags some white-noise frames as speech; the gate keeps quiet frames from it.
        # (RMS ≥ level as Σx² ≥ level² · n: one ufunc reduction, no per-call Python of np.mean)
        loud = np.add.reduce(np.square(frames, dtype=np.float64), axis=1) >= self._min_energy
        speech = np.zeros(len(frames), np.bool_)
        if loud.any():
            for i in np.flatnonzero(loud):
                speech[i] = bool(self._is_speech(_to_pcm16(frames[i]), self.options.sample_rate))
        return speech


class Segmenter:
    """Cuts a stream of fixed-size frames into speech segments (see the module docstring).

    Args:
        options: the segmenting options.
        is_speech: frame classifier for the SpeechDetector of frames pushed without speech flags, called with
            16-bit PCM bytes and the sample rate; by default webrtcvad at options.aggressiveness.
    """

    def __init__(self, options: VadOptions, is_speech: IsSpeech | None = None) -> None:
        self.options = options
        self.detect = SpeechDetector(options, is_speech)
        self._n_samples_seen = 0  # stream clock: samples pushed so far
        self._next_id = 0
        self._ring = np.zeros(0, np.float32)  # idle: the pre-roll, at most pre_roll_frames of audio
        self._buf: npt.NDArray[np.float32] | None = None  # open: segment audio in _buf[:_n]
        self._n = 0
        self._start = 0
        self._segment: int | None = None  # set once SegmentOpened is sent
        self._n_speech = 0
        self._n_trailing = 0  # non-speech frames since the last speech frame

    # -- state the caller may read ------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True while a segment is open, whether or not SegmentOpened was sent for it yet."""
        return self._buf is not None

    @property
    def current_segment(self) -> int | None:
        """Id of the open segment once SegmentOpened was sent for it; None when idle or still pending."""
        return self._segment

    @property
    def current_start(self) -> int | None:
        """Stream sample where the open segment's audio begins; None when idle."""
        return self._start if self.is_open else None

    @property
    def speech_frames_total(self) -> int:
        """Speech frames pushed into the open segment so far (only grows while it is open; 0 when idle)."""
        return self._n_speech

    def current_audio(self) -> npt.NDArray[np.float32]:
        """A copy of the open segment's audio so far, float32 (n,); empty when idle."""
        return np.zeros(0, np.float32) if self._buf is None else self._buf[: self._n].copy()

    # -- input --------------------------------------------------------------------------------------

    def push(self, frame: npt.NDArray[np.floating]) -> list[SegmentEvent]:
        """Feed the next frame and return the events it causes (usually none).

        Args:
            frame: float32 (frame_samples,) mono samples in [-1, 1].

        Raises:
            ValueError: if the frame is not one-dimensional with exactly frame_samples samples.
        """
        x = self._check_frame(frame)[None, :]  # (1, frame_samples)
        return self._push_frames(x, self.detect(x))

    def push_block(self, samples: npt.NDArray[np.floating],
                   speech: npt.NDArray[np.bool_] | None = None) -> list[SegmentEvent]:
        """Feed consecutive frames at once; the events are those of pushing them one by one.

        Args:
            samples: float32 (n_frames * frame_samples,) mono samples in [-1, 1].
            speech: bool (n_frames,), each frame's speech decision when the caller made it already (with a
                SpeechDetector of the same options, fed the same stream); None: decided here.

        Raises:
            ValueError: if samples is not one-dimensional whole frames, or speech does not match it.
        """
        x = np.asarray(samples, dtype=np.float32)
        fs = self.options.frame_samples
        if x.ndim != 1 or x.shape[0] % fs:
            raise ValueError(f"a block must hold whole frames of {fs} samples, got shape {x.shape}")
        frames = x.reshape(-1, fs)  # (n_frames, frame_samples)
        if speech is None:
            speech = self.detect(frames)
        elif speech.shape != (frames.shape[0],):
            raise ValueError(f"{frames.shape[0]} frames need as many speech flags, got shape {speech.shape}")
        return self._push_frames(frames, speech)

    def flush(self) -> list[SegmentEvent]:
        """Close the open segment now (end of stream, finalize): SegmentClosed("flush"), or SegmentDropped
        if it never reached min speech; [] when idle. The stream clock keeps running."""
        if not self.is_open:
            return []
        return [self._close("flush")]

    def skip(self, n_samples: int) -> list[SegmentEvent]:
        """Advance the stream clock over n_samples that are not pushed (captioning paused): the open segment
        is flushed first (its events are returned), and the pre-roll is forgotten, since it would no longer
        be contiguous with what comes next. Later segments keep their true positions on the stream."""
        if n_samples < 0:
            raise ValueError(f"cannot skip a negative number of samples ({n_samples})")
        events = self.flush()
        self._ring = np.zeros(0, np.float32)
        self._n_samples_seen += n_samples
        return events

    # -- steps --------------------------------------------------------------------------------------

    def _check_frame(self, frame: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        x = np.asarray(frame, dtype=np.float32)
        if x.shape != (self.options.frame_samples,):
            raise ValueError(f"a frame must hold {self.options.frame_samples} samples "
                             f"({self.options.frame_ms} ms at {self.options.sample_rate} Hz), got shape {x.shape}")
        return x

    def _push_frames(self, frames: npt.NDArray[np.float32], speech: npt.NDArray[np.bool_]) -> list[SegmentEvent]:
        """frames float32 (n, frame_samples) with their speech flags: runs of non-speech while idle in one step
        (pre-roll and clock), every other frame through the state machine one by one."""
        events: list[SegmentEvent] = []
        i, n, fs = 0, len(frames), self.options.frame_samples
        while i < n:
            if not self.is_open:
                hits = np.flatnonzero(speech[i:])
                j = i + int(hits[0]) if len(hits) else n  # the next speech frame, or the end of the block
                if j > i:
                    self._n_samples_seen += (j - i) * fs
                    self._remember(frames[i:j].reshape(-1))
                    i = j
                    continue
                self._open(self._n_samples_seen)
            self._n_samples_seen += fs
            self._append(frames[i])
            self._n_speech += bool(speech[i])
            self._n_trailing = 0 if speech[i] else self._n_trailing + 1
            events += self._advance()
            i += 1
        return events

    def _remember(self, x: npt.NDArray[np.float32]) -> None:
        keep = self.options.pre_roll_frames * self.options.frame_samples
        if not keep:
            return
        if len(x) >= keep:  # a long quiet block: its end is the whole pre-roll (a copy: the block is let go)
            self._ring = x[-keep:].copy()
        else:
            self._ring = np.concatenate([self._ring, x])[-keep:]

    def _open(self, frame_start: int) -> None:
        o = self.options
        self._buf = np.empty(o.max_segment_samples + o.frame_samples, np.float32)
        self._n = len(self._ring)
        self._buf[: self._n] = self._ring
        self._start = frame_start - self._n
        self._ring = np.zeros(0, np.float32)
        self._segment, self._n_speech, self._n_trailing = None, 0, 0

    def _append(self, x: npt.NDArray[np.float32]) -> None:
        assert self._buf is not None
        self._buf[self._n : self._n + len(x)] = x
        self._n += len(x)

    def _advance(self) -> list[SegmentEvent]:
        """Events due after a frame was added to the open segment: start, max-length cut, silence end."""
        events: list[SegmentEvent] = []
        if self._segment is None and self._n_speech >= self.options.min_speech_frames:
            events.append(self._confirm())
        if self._n > self.options.max_segment_samples:
            events += self._cut()
        if self.is_open and self._n_trailing >= self.options.end_silence_frames:
            events.append(self._close("silence"))
        return events

    def _confirm(self) -> SegmentOpened:
        self._segment, self._next_id = self._next_id, self._next_id + 1
        return SegmentOpened(self._segment, self._start)

    def _cut(self) -> list[SegmentEvent]:
        """Close the full segment at its quietest block (the reference's rule); carry the rest on."""
        assert self._buf is not None
        o = self.options
        events: list[SegmentEvent] = [] if self._segment is not None else [self._confirm()]
        hi = o.max_segment_samples
        cut = quietest_block(self._buf[: self._n], hi - o.split_search_samples, hi, o.split_block_samples)
        rest = self._buf[cut : self._n].copy()
        events.append(self._emit_closed(cut, "max_length"))
        if len(rest) <= self._n_trailing * o.frame_samples:  # nothing but non-speech after the cut
            self._go_idle(rest)
            return events
        self._buf[: len(rest)] = rest
        self._n, self._start = len(rest), self._start + cut
        self._n_speech = 0  # counts speech frames pushed from here on
        events.append(self._confirm())
        return events

    def _close(self, reason: str) -> SegmentClosed | SegmentDropped:
        if self._segment is None:  # never reached min speech: a blip
            assert self._buf is not None
            dropped = SegmentDropped(self._next_id, self._start, self._start + self._n)
            self._go_idle(self._buf[: self._n])
            return dropped
        closed = self._emit_closed(self._n, reason)
        self._go_idle(np.zeros(0, np.float32))  # no pre-roll from audio already sent
        return closed

    def _emit_closed(self, n: int, reason: str) -> SegmentClosed:
        assert self._buf is not None and self._segment is not None
        return SegmentClosed(self._segment, self._start, self._start + n, self._buf[:n].copy(), reason)

    def _go_idle(self, tail: npt.NDArray[np.float32]) -> None:
        self._ring = np.zeros(0, np.float32)
        self._remember(np.asarray(tail, np.float32).copy())
        self._buf, self._n, self._segment = None, 0, None
        self._n_speech, self._n_trailing = 0, 0


def _to_pcm16(x: npt.NDArray[np.float32]) -> bytes:
    """float32 in [-1, 1] to 16-bit little-endian PCM bytes, as webrtcvad reads them."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def speech_spans(samples: npt.NDArray[np.float32], options: VadOptions) -> list[tuple[int, int]]:
    """[start, end) sample spans of the speech segments of a whole recording, the way `serve` cuts a live
    stream (pre-roll, end-of-speech silence, minimum speech, ≤ max_segment_s); [] when there is no speech.
    The last partial frame is padded with zeros; spans never reach past the end of `samples`."""
    seg, n, step = Segmenter(options), samples.shape[0], options.frame_samples
    events: list[SegmentEvent] = []
    for i in range(0, n, step):
        frame = samples[i:i + step]
        if frame.shape[0] < step:
            frame = np.concatenate([frame, np.zeros(step - frame.shape[0], np.float32)])
        events += seg.push(frame)
    events += seg.flush()
    return [(e.start, min(e.end, n)) for e in events if isinstance(e, SegmentClosed) and e.start < n]
