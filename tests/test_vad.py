"""Segmenter: events and sample bookkeeping, max-length cuts like the reference, real webrtcvad on speech/noise."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import webrtcvad
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.audio.vad import (
    SegmentClosed,
    SegmentDropped,
    Segmenter,
    SegmentEvent,
    SegmentOpened,
    SpeechDetector,
    VadOptions,
    speech_spans,
)
from daemon.audio.windows import split_windows
from devtools.speech import SR, espeak

OPTS = VadOptions()
FRAME = OPTS.frame_samples  # 480 samples, 30 ms


def rms_is_speech(pcm: bytes, sample_rate: int) -> bool:
    """Stand-in for webrtcvad: a frame is speech when its RMS is above 0.01."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768.0
    return bool(np.sqrt(np.mean(x**2)) > 0.01)


def tone(n_frames: int, amplitude: float = 0.1) -> np.ndarray:
    t = np.arange(n_frames * FRAME) / SR
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def quiet(n_frames: int) -> np.ndarray:
    return np.zeros(n_frames * FRAME, np.float32)


def closed_at(segment: int, start: int, end: int, reason: str = "silence") -> SegmentClosed:
    """An expected SegmentClosed (audio is not compared)."""
    return SegmentClosed(segment, start, end, np.zeros(0, np.float32), reason)


def feed(seg: Segmenter, x: np.ndarray) -> list[tuple[int, SegmentEvent]]:
    """Push x frame by frame; return (index of the frame that caused it, event) pairs."""
    assert len(x) % seg.options.frame_samples == 0
    n = seg.options.frame_samples
    return [(i, e) for i in range(len(x) // n) for e in seg.push(x[i * n : (i + 1) * n])]


def test_pre_roll_silence_end_blip_and_ids() -> None:
    # frames: 50 quiet | 40 speech | 30 quiet | 3 speech (90 ms blip) | 30 quiet | 20 speech | 30 quiet
    x = np.concatenate([quiet(50), tone(40), quiet(30), tone(3), quiet(30), tone(20), quiet(30)])
    seg = Segmenter(OPTS, rms_is_speech)
    got = feed(seg, x)
    pre, end_silence, min_speech = 10 * FRAME, 20, 9  # 300 ms, 600 ms, 250 ms -> 9 frames
    onset2 = (50 + 40 + 30 + 3 + 30) * FRAME
    assert [(i, e) for i, e in got] == [
        (50 + min_speech - 1, SegmentOpened(0, 50 * FRAME - pre)),
        (50 + 40 + end_silence - 1, closed_at(0, 50 * FRAME - pre, (50 + 40 + end_silence) * FRAME)),
        (123 + end_silence - 1, SegmentDropped(1, 110 * FRAME, (123 + end_silence) * FRAME)),
        (153 + min_speech - 1, SegmentOpened(1, onset2 - pre)),
        (173 + end_silence - 1, closed_at(1, onset2 - pre, (173 + end_silence) * FRAME)),
    ]
    for _, e in got:
        if isinstance(e, SegmentClosed):
            assert e.reason == "silence" and e.audio.dtype == np.float32
            assert len(e.audio) == e.end - e.start and np.array_equal(e.audio, x[e.start : e.end])
    assert not seg.is_open and seg.flush() == []


def test_pre_roll_is_clamped_at_stream_start_and_state_is_exposed() -> None:
    seg = Segmenter(OPTS, rms_is_speech)
    assert feed(seg, quiet(3)) == []
    assert [e for _, e in feed(seg, tone(8))] == []  # 8 speech frames: still pending
    assert seg.is_open and seg.current_segment is None and seg.current_start == 0
    assert seg.speech_frames_total == 8 and len(seg.current_audio()) == 11 * FRAME
    assert [e for _, e in feed(seg, tone(1))] == [SegmentOpened(0, 0)]
    assert seg.current_segment == 0 and seg.speech_frames_total == 9
    audio = seg.current_audio()
    audio[:] = 1.0  # a copy: the segmenter's audio is unchanged
    assert np.array_equal(seg.current_audio()[: 3 * FRAME], quiet(3))


def test_max_length_cuts_at_the_quietest_block_and_loses_nothing() -> None:
    n_frames = 2667  # 80.0 s
    t = np.arange(n_frames * FRAME) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.37 * t))
    dip = 30 * SR + 20 * 1600  # block 20 of the last 5 s before 35 s
    x[dip : dip + 1600] *= 0.01
    x = x.astype(np.float32)
    seg = Segmenter(OPTS, rms_is_speech)
    events = [e for _, e in feed(seg, x)] + seg.flush()
    closed = [e for e in events if isinstance(e, SegmentClosed)]
    starts = [e for e in events if isinstance(e, SegmentOpened)]
    assert closed[0].end == dip and closed[0].reason == "max_length"
    assert [c.reason for c in closed] == ["max_length", "max_length", "flush"]
    assert [(c.segment, c.start) for c in closed] == [(s.segment, s.start) for s in starts] == [(0, 0), (1, dip), (2, closed[1].end)]
    assert [(c.start, c.end) for c in closed] == split_windows(x, 35 * SR, 5 * SR, 1600)
    assert all(len(c.audio) <= 35 * SR and len(c.audio) == c.end - c.start for c in closed)
    assert np.array_equal(np.concatenate([c.audio for c in closed]), x)


def test_speech_ending_just_before_max_length_leaves_no_silent_segment() -> None:
    # 34.5 s of speech, then silence: the cut falls in the silence, and what follows it is not a segment.
    x = np.concatenate([tone(1150), quiet(60)])
    seg = Segmenter(OPTS, rms_is_speech)
    events = [e for _, e in feed(seg, x)]
    assert [type(e) for e in events] == [SegmentOpened, SegmentClosed]
    assert events[1].reason == "max_length" and 1150 * FRAME <= events[1].end <= 35 * SR
    assert not seg.is_open and seg.flush() == []


def test_real_webrtcvad_speech_then_silence_and_noise() -> None:
    speech = espeak("the quick brown fox jumps over the lazy dog")
    x = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    x = np.pad(x, (0, -len(x) % FRAME))
    seg = Segmenter(OPTS)
    events = [e for _, e in feed(seg, x)]
    voiced = np.flatnonzero(np.abs(x) > 1e-3)
    assert [type(e) for e in events] == [SegmentOpened, SegmentClosed]
    closed = events[1]
    assert isinstance(closed, SegmentClosed) and closed.reason == "silence"
    assert closed.start <= voiced[0] and closed.end > voiced[-1]
    assert np.array_equal(closed.audio, x[closed.start : closed.end])

    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(60 * SR) * 10 ** (-50 / 20)).astype(np.float32)
    assert feed(seg, np.zeros(60 * SR, np.float32)) == []
    assert feed(seg, noise) == []
    assert not seg.is_open and seg.flush() == []


def test_energy_gate_keeps_quiet_noise_out_even_if_the_detector_says_speech() -> None:
    noise = (np.random.default_rng(1).standard_normal(3 * SR) * 10 ** (-50 / 20)).astype(np.float32)
    assert feed(Segmenter(OPTS, lambda pcm, rate: True), noise) == []
    ungated = Segmenter(VadOptions(min_level_dbfs=float("-inf")), lambda pcm, rate: True)
    assert [type(e) for _, e in feed(ungated, noise)] == [SegmentOpened]


class RecordingVad:
    """webrtcvad.Vad that records each frame it is asked about; the real webrtcvad answers (and raises on a
    frame length or rate it does not take)."""

    made: ClassVar[list[RecordingVad]] = []
    real: ClassVar[Callable[[int], Any]] = webrtcvad.Vad

    def __init__(self, mode: int) -> None:
        self.vad = RecordingVad.real(mode)
        self.frames: list[tuple[int, int]] = []  # (bytes, sample rate) per call
        RecordingVad.made.append(self)

    def is_speech(self, pcm: bytes, sample_rate: int) -> bool:
        self.frames.append((len(pcm), sample_rate))
        return bool(self.vad.is_speech(pcm, sample_rate))


@pytest.mark.parametrize("rate", [8000, 16000, 32000, 48000])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_every_webrtcvad_format_reaches_webrtcvad(rate: int, frame_ms: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webrtcvad, "Vad", RecordingVad)
    monkeypatch.setattr(RecordingVad, "made", [])
    seg = Segmenter(VadOptions(sample_rate=rate, frame_ms=frame_ms))
    n = rate * frame_ms // 1000
    loud = (0.5 * np.sin(2 * np.pi * 300 * np.arange(n) / rate)).astype(np.float32)  # far above the energy gate
    assert seg.push(loud) == []  # one frame is not yet a segment
    assert [v.frames for v in RecordingVad.made] == [[(2 * n, rate)]]  # webrtcvad classified it, 16-bit PCM


def test_flush() -> None:
    seg = Segmenter(OPTS, rms_is_speech)
    assert seg.flush() == []
    feed(seg, np.concatenate([quiet(5), tone(12), quiet(4)]))
    out = seg.flush()
    assert out == [closed_at(0, 0, 21 * FRAME, "flush")]
    assert isinstance(out[0], SegmentClosed) and len(out[0].audio) == 21 * FRAME and not seg.is_open and seg.flush() == []
    feed(seg, tone(3))  # pending: flushing drops it, and its id is used by the next segment
    assert seg.flush() == [SegmentDropped(1, 21 * FRAME, 24 * FRAME)]


@pytest.mark.parametrize("n", [FRAME - 1, FRAME + 1, 0])
def test_wrong_frame_length(n: int) -> None:
    with pytest.raises(ValueError, match="480 samples"):
        Segmenter(OPTS, rms_is_speech).push(np.zeros(n, np.float32))


def test_two_dimensional_frame() -> None:
    with pytest.raises(ValueError, match="480 samples"):
        Segmenter(OPTS, rms_is_speech).push(np.zeros((FRAME, 1), np.float32))


@pytest.mark.parametrize("kwargs,match", [
    ({"aggressiveness": 4}, "aggressiveness"),
    ({"frame_ms": 25}, "frame_ms"),
    ({"sample_rate": 22050}, "sample_rate"),
    ({"min_level_dbfs": 3.0}, "min_level_dbfs"),
    ({"min_level_dbfs": float("nan")}, "min_level_dbfs"),
    ({"pre_roll_ms": -1}, "pre_roll_ms"),
    ({"min_speech_ms": -30}, "min_speech_ms"),
    ({"end_silence_ms": 0}, "end_silence_ms"),
    ({"split_block_samples": 0}, "split_block_samples"),
    ({"split_search_s": 0.0}, "split_search_s"),
    ({"max_segment_s": 5.0}, "max_segment_s"),
])
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VadOptions(**kwargs)  # type: ignore[arg-type]


def test_derived_sizes() -> None:
    o = VadOptions(frame_ms=20, sample_rate=8000, pre_roll_ms=300, end_silence_ms=610, min_speech_ms=250)
    assert (o.frame_samples, o.pre_roll_frames, o.end_silence_frames, o.min_speech_frames) == (160, 15, 31, 13)
    assert o.max_segment_samples == 35 * 8000


def test_speech_spans_of_a_whole_recording() -> None:
    """`transcribe --vad`: one span per utterance, each holding all of its speech, none in the silences."""
    a, b = espeak("turn on the kitchen lights"), espeak("set a timer for ten minutes")
    gap = np.zeros(int(1.5 * SR), np.float32)
    audio = np.concatenate([gap, a, gap, b, np.zeros(100, np.float32)])  # ends inside a frame
    voiced = [np.nonzero(np.abs(x) > 0.01)[0][[0, -1]] for x in (a, b)]
    speech = [(len(gap) + voiced[0][0], len(gap) + voiced[0][1]),
              (2 * len(gap) + len(a) + voiced[1][0], 2 * len(gap) + len(a) + voiced[1][1])]
    spans = speech_spans(audio, OPTS)
    assert len(spans) == 2, spans
    for (s, e), (v0, v1) in zip(spans, speech, strict=True):
        assert s <= v0 and e >= v1, ((s, e), (v0, v1))  # the whole utterance is inside its span
        assert v0 - s <= OPTS.pre_roll_frames * FRAME + FRAME  # and the span starts at most a pre-roll early
    assert spans[0][1] < speech[1][0] and spans[1][1] <= len(audio)
    assert speech_spans(np.zeros(5 * SR, np.float32), OPTS) == []
    assert speech_spans(np.random.default_rng(0).normal(0, 10 ** (-50 / 20), 5 * SR).astype(np.float32), OPTS) == []


# -- blocks: the capture thread hands frames over in blocks, with its own detector's speech flags -------------

CUT_OPTS = VadOptions(max_segment_s=3.0, split_search_s=1.0)  # a short window, so the program has a cut


@functools.cache
def room_program() -> np.ndarray:
    """Low room noise (-50 dBFS) with two utterances, a blip, digital silence and one utterance longer than
    CUT_OPTS' window: every path of the segmenter, under the real webrtcvad."""
    rng = np.random.default_rng(7)

    def noise(seconds: float) -> np.ndarray:
        return (rng.standard_normal(int(seconds * SR)) * 10 ** (-50 / 20)).astype(np.float32)

    a, b = espeak("turn on the kitchen lights"), espeak("set a timer for ten minutes")
    long = np.concatenate([espeak("the quick brown fox jumps over the lazy dog"), a])
    x = np.concatenate([noise(1.0), a + noise(len(a) / SR), noise(1.2), tone(3, 0.3), noise(1.0),
                        np.zeros(SR, np.float32), b, noise(1.0), long, noise(1.5)])
    return np.pad(x, (0, -len(x) % FRAME))


def with_audio(events: list[SegmentEvent]) -> list[tuple[SegmentEvent, bytes | None]]:
    return [(e, e.audio.tobytes() if isinstance(e, SegmentClosed) else None) for e in events]


@functools.cache
def frame_by_frame() -> list[tuple[SegmentEvent, bytes | None]]:
    seg = Segmenter(CUT_OPTS)
    return with_audio([e for _, e in feed(seg, room_program())] + seg.flush())


def test_the_room_program_reaches_every_path() -> None:
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e, _ in frame_by_frame()]
    assert ("SegmentClosed", "max_length") in kinds and ("SegmentClosed", "silence") in kinds
    assert kinds.count(("SegmentOpened", None)) >= 3


@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30))
@settings(max_examples=25, deadline=None)
def test_push_block_gives_the_events_of_pushing_frame_by_frame(sizes: list[int]) -> None:
    """Any split into blocks (idle runs of non-speech taken in one step): the same events, the same audio
    (pre-roll included, nothing lost at a cut), the same positions on the stream clock."""
    frames = room_program().reshape(-1, FRAME)
    seg, got, i, k = Segmenter(CUT_OPTS), [], 0, 0
    while i < len(frames):
        n = sizes[k % len(sizes)]
        got += seg.push_block(frames[i : i + n].reshape(-1))
        i, k = i + n, k + 1
    assert with_audio(got + seg.flush()) == frame_by_frame()


def test_speech_flags_made_elsewhere_are_used_and_give_the_same_events() -> None:
    """The capture thread's detector (same options, same stream) decides; the segmenter only follows."""
    frames = room_program().reshape(-1, FRAME)
    detector = SpeechDetector(CUT_OPTS)

    def never(pcm: bytes, rate: int) -> bool:
        raise AssertionError("the segmenter classified a frame although its flag was given")

    seg, got = Segmenter(CUT_OPTS, never), []
    flags = []
    for block in np.array_split(frames, 41):
        flags.append(detector(block))
        got += seg.push_block(block.reshape(-1), flags[-1])
    assert with_audio(got + seg.flush()) == frame_by_frame()
    first_speech = int(np.argmax(np.concatenate(flags)))
    opened = next(e for e, _ in frame_by_frame() if isinstance(e, SegmentOpened))
    assert opened.start == (first_speech - CUT_OPTS.pre_roll_frames) * FRAME  # the whole 300 ms pre-roll


def test_the_detector_gates_by_level_then_asks_the_classifier() -> None:
    asked: list[int] = []

    def says_speech(pcm: bytes, rate: int) -> bool:
        asked.append(len(pcm))
        return True

    frames = np.stack([quiet(1), tone(1, 10 ** (-50 / 20)), tone(1, 0.1)])  # silence, -53 dBFS, -23 dBFS
    assert SpeechDetector(OPTS, says_speech)(frames).tolist() == [False, False, True]
    assert asked == [2 * FRAME]  # only the loud frame reached the classifier, as 16-bit PCM
    ungated = SpeechDetector(VadOptions(min_level_dbfs=float("-inf")), says_speech)
    assert ungated(frames).tolist() == [True, True, True]


@pytest.mark.parametrize("n", [FRAME - 1, FRAME + 1, 2 * FRAME + 7])
def test_a_block_of_broken_frames_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="whole frames of 480 samples"):
        Segmenter(OPTS, rms_is_speech).push_block(np.zeros(n, np.float32))


def test_speech_flags_must_match_the_block() -> None:
    with pytest.raises(ValueError, match="3 frames need as many speech flags"):
        Segmenter(OPTS, rms_is_speech).push_block(quiet(3), np.zeros(2, np.bool_))
