"""Blocks from a capture thread (daemon.live.blocks): every sample once and in order, speech decided where it
arrives, handed over at once for speech and the hold after it, gathered otherwise; through a real StdinSource
the segmenter sees the same events, pre-roll and clock as frame by frame."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import pytest
from test_vad import CUT_OPTS, room_program

from daemon.audio import FRAME_SAMPLES
from daemon.audio.vad import Segmenter, SegmentEvent, SpeechDetector, VadOptions
from daemon.live.blocks import QUIET_FRAMES, Block, Gatherer
from daemon.live.capture import StdinSource

OPTS = VadOptions()
HOLD = OPTS.end_silence_frames  # 20


def pushes(x: np.ndarray, sizes: list[int]) -> list[list[np.ndarray]]:
    """x cut into frames, grouped into pushes of the given numbers of frames (cycled)."""
    frames = list(x.reshape(-1, FRAME_SAMPLES))
    out, i, k = [], 0, 0
    while i < len(frames):
        out.append(frames[i : i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    return out


def gather(x: np.ndarray, sizes: list[int]) -> tuple[list[tuple[int, Block]], Block | None]:
    """(index of the push that handed it over, block) for each block, and what flush() leaves at the end."""
    g = Gatherer(SpeechDetector(OPTS), HOLD)
    out = [(i, b) for i, p in enumerate(pushes(x, sizes)) if (b := g.push(p)) is not None]
    return out, g.flush()


@pytest.mark.parametrize("sizes", [[1], [3], [2, 5, 1, 7], [40]])
def test_every_sample_once_in_order_with_the_detectors_decisions(sizes: list[int]) -> None:
    x = room_program()
    blocks, rest = gather(x, sizes)
    got = [b for _, b in blocks] + ([rest] if rest is not None else [])
    assert np.array_equal(np.concatenate([b.samples for b in got]), x)
    flags = np.concatenate([b.speech for b in got if b.speech is not None])
    assert np.array_equal(flags, SpeechDetector(OPTS)(x.reshape(-1, FRAME_SAMPLES)))  # one detector, in order
    assert all(b.n_frames == len(b.speech) for b in got if b.speech is not None)


@pytest.mark.parametrize("sizes", [[1], [3], [2, 5, 1, 7]])
def test_speech_and_the_hold_after_it_go_at_once_quiet_frames_wait(sizes: list[int]) -> None:
    x = room_program()
    groups = pushes(x, sizes)
    flags = SpeechDetector(OPTS)(x.reshape(-1, FRAME_SAMPLES))
    speech_at = np.flatnonzero(flags)
    blocks, _ = gather(x, sizes)
    handed, frame = {}, 0  # frame index → index of the push whose call returned it
    for i, b in blocks:
        for _ in range(b.n_frames):
            handed[frame] = i
            frame += 1
    pushed, frame = {}, 0  # frame index → index of the push that brought it
    for i, p in enumerate(groups):
        for _ in p:
            pushed[frame] = i
            frame += 1
    for f in range(len(flags)):
        before = speech_at[speech_at <= f]
        urgent = len(before) > 0 and f - before[-1] <= HOLD  # speech, or within the hold after it
        if urgent:
            assert handed.get(f) == pushed[f], f  # not a push later
        elif f in handed:
            assert handed[f] - pushed[f] <= QUIET_FRAMES  # quiet frames wait, but not for long
    quiet_blocks = [b.n_frames for _, b in blocks if b.speech is not None and not b.speech.any()]
    assert max(quiet_blocks) >= QUIET_FRAMES  # silence went over in bulk


def test_quiet_says_when_the_next_frame_is_not_urgent() -> None:
    g = Gatherer(SpeechDetector(OPTS), hold_frames=2)
    loud = (0.3 * np.sin(2 * np.pi * 300 * np.arange(FRAME_SAMPLES) / 16000)).astype(np.float32)
    zero = np.zeros(FRAME_SAMPLES, np.float32)
    assert g.quiet and g.push([zero]) is None
    states = []
    for frame in [loud, loud, zero, zero, zero]:
        block = g.push([frame])
        states.append((block is not None, g.quiet))
    # speech goes at once (with the quiet frame before it); two frames of hold go at once; the third waits
    assert states == [(True, False), (True, False), (True, False), (True, True), (False, True)]


def test_without_a_detector_every_push_goes_at_once_undecided() -> None:
    g = Gatherer(None, HOLD)
    frames = list(np.arange(3 * FRAME_SAMPLES, dtype=np.float32).reshape(3, FRAME_SAMPLES))
    block = g.push(frames)
    assert block is not None and block.speech is None and np.array_equal(block.samples, np.concatenate(frames))
    assert not g.quiet and g.push([]) is None and g.flush() is None


def test_bad_gatherer_options() -> None:
    with pytest.raises(ValueError, match="quiet_frames"):
        Gatherer(None, 3, quiet_frames=0)


def test_the_stdin_source_hands_the_segmenter_what_frame_by_frame_pushes_give() -> None:
    """Real reader thread, real pipe, odd write sizes, paced writes: blocks carry every sample and the reader's
    decisions; the segmenter fed blocks with those flags gives the same events (pre-roll, clock, cuts)."""
    x = room_program()
    pcm = np.round(x * 32767).astype("<i2").tobytes()
    y = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0  # what the daemon hears
    one = Segmenter(CUT_OPTS)  # a 3 s window: the program has a max-length cut
    expected: list[SegmentEvent] = [e for f in y.reshape(-1, FRAME_SAMPLES) for e in one.push(f)] + one.flush()
    r, w = os.pipe()

    def write() -> None:
        for i in range(0, len(pcm), 4001):  # odd sizes; a write every ms (much faster than real time)
            os.write(w, pcm[i : i + 4001])
            time.sleep(0.001)
        os.close(w)

    async def read() -> list[Block]:
        src = StdinSource(16000, fd=r, vad=CUT_OPTS)
        src.start()
        threading.Thread(target=write, daemon=True).start()
        out = [b async for b in src.blocks()]
        src.close()
        return out

    blocks = asyncio.run(read())
    os.close(r)
    assert np.array_equal(np.concatenate([b.samples for b in blocks]), y)
    assert all(b.speech is not None for b in blocks)
    seg = Segmenter(CUT_OPTS, lambda pcm, rate: pytest.fail("the segmenter must use the reader's decisions"))
    got = [e for b in blocks for e in seg.push_block(b.samples, b.speech)] + seg.flush()
    assert got == expected and len(got) >= 6
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(got, expected, strict=True) if hasattr(a, "audio"))
