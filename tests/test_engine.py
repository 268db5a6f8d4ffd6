"""CaptionEngine with a scripted model and a fake tokenizer: partial/final rules, coalescing, commands, the pause
clock, isolated delivery (no model files, no torch, no audio device, no network)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import numpy as np
import pytest
from fake_model import (
    SR,
    WORDS,
    ScriptedModel,
    engine_for,
    frames,
    loud,
    silence,
    speech,
)

from daemon.errors import ConfigError
from daemon.live.config import DaemonConfig
from daemon.live.engine import CaptionEngine
from daemon.live.messages import Final, Partial, SpeechStarted, SpeechStopped, Status
from daemon.model.decode import DecodeResult


async def run_engine(model: ScriptedModel, audio: np.ndarray, tick_every: int = 10) -> list:
    """Push `audio` frame by frame with a tick every `tick_every` frames; finalize and drain."""
    events: list = []
    engine = engine_for(model, events)
    worker = asyncio.create_task(engine.run_worker())
    for i, frame in enumerate(frames(audio)):
        engine.push(frame)
        if i % tick_every == 0:
            engine.tick()
        await asyncio.sleep(0.002)
    engine.finalize()
    await asyncio.wait_for(engine.drain(), 30)
    worker.cancel()
    return events


def stream() -> np.ndarray:
    return np.concatenate([silence(1), speech(3.0), silence(1), speech(2.0), silence(1)])


def test_protocol_order_one_final_per_segment() -> None:
    events = asyncio.run(run_engine(ScriptedModel(), stream()))
    kinds = [type(e) for e in events]
    assert kinds.count(SpeechStarted) == kinds.count(SpeechStopped) == kinds.count(Final) == 2
    for seg in (0, 1):
        mine = [e for e in events if getattr(e, "segment", None) == seg]
        order = [type(e) for e in mine]
        assert order[0] is SpeechStarted and order[-2:] == [SpeechStopped, Final]
        assert all(k is Partial for k in order[1:-2])
    finals = [e for e in events if isinstance(e, Final)]
    assert finals[0].start < finals[0].end <= finals[1].start < finals[1].end  # monotonic times
    for f in finals:  # the final is the decode of the whole closed segment
        assert f.text.lower() == " ".join(WORDS[: round((f.end - f.start) * SR) // 8000])


def test_stable_prefix_only_grows_and_the_text_never_repeats() -> None:
    events = asyncio.run(run_engine(ScriptedModel(), stream()))
    partials = [e for e in events if isinstance(e, Partial) and e.segment == 0]
    assert len(partials) >= 2
    stables = [p.stable.split() for p in partials]
    for a, b in itertools.pairwise(stables):
        assert b[: len(a)] == a  # never rewritten
    assert len(stables[-1]) >= 3  # it did grow
    for p in partials:
        text = (p.stable + p.unstable).split()
        assert "  " not in p.stable + p.unstable
        assert [w.lower() for w in text] == WORDS[: len(text)]  # no word shown twice


def test_partials_never_queue_behind_a_slow_model_and_finals_are_never_dropped() -> None:
    """A model slower than the partial ticks (and than the audio): a partial is asked for only while the worker
    is idle and no final waits, so at most one is pending and none is replaced; every request is accounted for
    (decoded or dropped when its segment closed); every final is decoded once, in order (test_falling_behind.py
    has the cadence and the warning)."""
    model = ScriptedModel(delay=0.15)
    audio = np.concatenate([np.concatenate([speech(1.2), silence(0.75)]) for _ in range(6)])

    async def scenario() -> tuple[list, CaptionEngine, int]:
        events: list = []
        engine = engine_for(model, events)
        worker = asyncio.create_task(engine.run_worker())
        most_pending = 0
        for i, frame in enumerate(frames(audio)):
            engine.push(frame)
            if i % 2 == 0:
                engine.tick()
            most_pending = max(most_pending, int(engine.jobs.partial_pending))
            assert engine.jobs.depth <= 1 + sum(isinstance(e, SpeechStopped) for e in events)
            await asyncio.sleep(0.002)
        engine.finalize()
        await asyncio.wait_for(engine.drain(), 30)
        worker.cancel()
        return events, engine, most_pending

    events, engine, most_pending = asyncio.run(scenario())
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.segment for f in finals] == list(range(6))
    q = engine.jobs
    n_finals_decoded, n_partials_decoded = len(finals), len(model.calls) - len(finals)
    assert most_pending <= 1 and model.max_in_flight == 1
    assert q.partials_requested == n_partials_decoded + q.partials_replaced + q.partials_dropped
    assert n_finals_decoded == 6 and len(model.calls) == n_finals_decoded + n_partials_decoded
    assert q.partials_replaced == 0 and q.partials_requested >= 1


def test_configure_validates_and_announces() -> None:
    events: list = []
    engine = engine_for(ScriptedModel(), events)
    engine.configure("es", False)
    assert engine.settings.language == "es" and not engine.settings.punctuation
    assert isinstance(events[-1], Status) and events[-1].settings == engine.settings
    with pytest.raises(ConfigError, match="unknown language"):
        engine.configure("xx", None)
    assert engine.settings.language == "es"


def test_pause_finalizes_and_drops_audio() -> None:
    async def scenario() -> list:
        events: list = []
        engine = engine_for(ScriptedModel(), events)
        worker = asyncio.create_task(engine.run_worker())
        s = speech(1.5)
        for f in frames(s):
            engine.push(f)
        engine.pause()
        for f in frames(s):
            engine.push(f)  # ignored while paused
        await asyncio.wait_for(engine.drain(), 30)
        worker.cancel()
        return events

    events = asyncio.run(scenario())
    assert sum(isinstance(e, Final) for e in events) == 1
    assert any(isinstance(e, Status) and e.code == "paused" for e in events)


def test_the_stream_clock_runs_on_while_paused() -> None:
    """1 s of silence, 10 s paused, then speech at 11.0 s of the stream: it is reported at 11.0 s (the
    segmenter's 300 ms pre-roll may reach back before it; a stopped clock would say 1.0 s)."""
    async def scenario() -> list:
        events: list = []
        engine = engine_for(ScriptedModel(), events)
        worker = asyncio.create_task(engine.run_worker())
        for f in frames(silence(1.0)):
            engine.push(f)
        engine.pause()
        for f in frames(speech(10.0)):
            engine.push(f)
        engine.resume()
        for f in frames(np.concatenate([speech(1.5), silence(1.0)])):
            engine.push(f)
        await asyncio.wait_for(engine.drain(), 30)
        worker.cancel()
        return events

    events = asyncio.run(scenario())
    started = [e for e in events if isinstance(e, SpeechStarted)]
    finals = [e for e in events if isinstance(e, Final)]
    assert len(started) == len(finals) == 1
    assert 10.7 - 1e-3 <= started[0].start <= 11.0 + 0.03, started  # ≤ pre-roll before, ≤ one frame after
    assert 10.7 - 1e-3 <= finals[0].start <= 11.03 and 12.5 <= finals[0].end <= 13.2, finals


def test_a_failed_decode_still_gives_one_final() -> None:
    class Broken(ScriptedModel):
        def transcribe_window(self, audio: np.ndarray, options: object) -> tuple[list[int], DecodeResult]:
            raise RuntimeError("the runtime fell over")

    events = asyncio.run(run_engine(Broken(), stream()))
    finals = [e for e in events if isinstance(e, Final)]
    assert [(f.text, f.stop_reason) for f in finals] == [("", "error"), ("", "error")]


def test_an_emit_that_raises_does_not_stop_captions(caplog: pytest.LogCaptureFixture) -> None:
    """The delivery of every final fails (a full disk, say): later segments are still decoded and every other
    event still goes out; the failure is logged once, with its traceback, and kept as a warning."""
    delivered: list = []

    def emit(event: object) -> None:
        if isinstance(event, Final):
            raise OSError(28, "No space left on device")
        delivered.append(event)

    async def scenario() -> CaptionEngine:
        engine = CaptionEngine(DaemonConfig(), ScriptedModel(), emit, is_speech=loud)
        worker = asyncio.create_task(engine.run_worker())
        for f in frames(np.concatenate([silence(0.5), *[np.concatenate([speech(1.0), silence(1.0)])] * 3])):
            engine.push(f)
            await asyncio.sleep(0)
        engine.finalize()
        await asyncio.wait_for(engine.drain(), 30)
        worker.cancel()
        return engine

    with caplog.at_level(logging.ERROR, logger="daemon.live.engine"):
        engine = asyncio.run(scenario())
    assert sum(isinstance(e, SpeechStopped) for e in delivered) == 3
    assert engine.jobs.depth == 0 and not engine.jobs.busy  # nothing stuck in the queue
    assert engine.warnings == ["OSError delivering final: [Errno 28] No space left on device"]
    records = [r for r in caplog.records if "delivering final" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None


def test_drain_waits_for_the_last_final_without_polling() -> None:
    """drain() returns right after the last final is emitted, however long the decode takes."""
    async def scenario() -> tuple[list, float, float]:
        events: list = []
        engine = engine_for(ScriptedModel(delay=0.3), events)
        worker = asyncio.create_task(engine.run_worker())
        for f in frames(np.concatenate([speech(1.0), silence(0.2)])):
            engine.push(f)
        engine.finalize()
        t0 = time.monotonic()
        await asyncio.wait_for(engine.drain(), 30)
        waited = time.monotonic() - t0
        worker.cancel()
        return events, waited, 0.3

    events, waited, delay = asyncio.run(scenario())
    assert isinstance(events[-1], Final)
    assert waited >= delay * 0.9  # it did wait for the decode
