"""Falling behind (issue 17.7) with a model slowed on purpose: partials adapt their cadence to the decode time
instead of queuing, a `falling_behind` status carries the lag, /health shows it, every final arrives in order,
and `caught_up` clears it once the model is fast again."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_model import SR, WORDS, ScriptedModel, engine_for, silence, speech
from test_app import Session, code_seen, config, of, write_program

from daemon.live import engine as engine_module
from daemon.live.app import Daemon
from daemon.live.engine import PARTIAL_BACKOFF, CaptionEngine
from daemon.live.messages import Final, Status
from daemon.model.transcriber import Transcriber
from devtools.daemon_process import wer
from exporter.demo import grammar

SLOW_S = 0.4  # one decode of the slowed model
SPEECH_S, GAP_S = 1.2, 0.75  # each segment: four words of the scripted model, then enough silence to close it


class Timed:
    """Wraps the engine's decode (in the worker thread) to record (kind, start, end) of every decode."""

    def __init__(self, engine: CaptionEngine) -> None:
        self.spans: list[tuple[str, float, float]] = []
        inner = engine._decode

        def decode(job: Any) -> Any:
            t0 = time.monotonic()
            try:
                return inner(job)
            finally:
                self.spans.append((job.kind, t0, time.monotonic()))

        engine._decode = decode  # type: ignore[method-assign]


def tick(engine: CaptionEngine) -> None:
    """A tick that checks the rule: no partial is requested while the worker is busy or a final waits."""
    before, model_busy = engine.jobs.partials_requested, engine.jobs.busy or engine.jobs.finals_waiting > 0
    engine.tick()
    assert not (model_busy and engine.jobs.partials_requested > before), "a partial queued behind the model"


async def feed_segment(engine: CaptionEngine, pause_s: float, speech_s: float = SPEECH_S) -> None:
    """One segment in blocks of 0.15 s (a tick after each) with `pause_s` between blocks, then its silence."""
    for block in np.split(speech(speech_s), round(speech_s / 0.15)):
        engine.push_block(block)
        tick(engine)
        await asyncio.sleep(pause_s)
    engine.push_block(silence(GAP_S))
    tick(engine)
    await asyncio.sleep(pause_s)


def statuses(events: list[Any], code: str) -> list[Status]:
    return [e for e in events if isinstance(e, Status) and e.code == code]


def test_a_slow_model_slows_partials_warns_with_the_lag_keeps_every_final_and_catches_up() -> None:
    model = ScriptedModel(delay=SLOW_S, jitter_last=False)
    events: list[Any] = []
    lags_while_behind: list[float] = []

    async def scenario() -> tuple[CaptionEngine, Timed, int]:
        engine = engine_for(model, events)
        engine.lag_warn_s = 1.0  # the default (LAG_WARN_S) is 2 s; a shorter test
        timed = Timed(engine)
        worker = asyncio.create_task(engine.run_worker())
        await feed_segment(engine, pause_s=0.05, speech_s=4.8)  # one long utterance: partials after partials
        for _ in range(6):  # short segments that end ~3× faster than the model decodes their finals
            await feed_segment(engine, pause_s=0.015)
        deadline = time.monotonic() + 30
        while not statuses(events, "falling_behind"):  # the backlog grows while the model stays slow
            assert time.monotonic() < deadline, "no falling_behind warning"
            tick(engine)
            await asyncio.sleep(0.05)
        lags_while_behind.append(engine.lag_seconds)
        n_slow = len(timed.spans)
        model.delay = 0.0  # the slowness ends: the backlog drains
        await asyncio.wait_for(engine.drain(), 30)
        engine.tick()
        for _ in range(2):  # and fresh speech is captioned without a new warning
            await feed_segment(engine, pause_s=0.015)
        engine.finalize()
        await asyncio.wait_for(engine.drain(), 30)
        engine.tick()
        worker.cancel()
        return engine, timed, n_slow

    engine, timed, n_slow = asyncio.run(scenario())

    # every final, once, in order, with its whole text
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.segment for f in finals] == list(range(9))
    for f in finals:  # the scripted model's text for the whole closed segment
        assert f.text == " ".join(WORDS[: round((f.end - f.start) * SR) // 8000]) and f.stop_reason == "eos"
    assert finals[0].start < finals[0].end <= finals[1].start  # and on the stream clock, in order

    # the warning carried the lag, /health's figure was above zero while behind, and it cleared once
    behind, caught_up = statuses(events, "falling_behind"), statuses(events, "caught_up")
    assert len(behind) == 1 and behind[0].level == "warning" and behind[0].lag_s is not None
    assert behind[0].lag_s >= 1.0 and f"{behind[0].lag_s:.1f} s behind" in behind[0].message
    assert lags_while_behind[0] > 0
    assert len(caught_up) == 1 and caught_up[0].level == "info" and caught_up[0].lag_s == 0.0
    assert events.index(behind[0]) < events.index(caught_up[0])
    assert engine.lag_seconds == 0.0 and engine.problems == {}

    # partial cadence: each partial decode starts ≥ PARTIAL_BACKOFF × the previous decode's time after it
    slow = timed.spans[:n_slow]
    for (_, s0, e0), (kind, s1, _) in itertools.pairwise(slow):
        if kind == "partial":
            assert s1 >= e0 + PARTIAL_BACKOFF * (e0 - s0), (e0, s0, s1)
    n_partials = sum(kind == "partial" for kind, _, _ in slow)
    wall = slow[-1][2] - slow[0][1]
    assert 2 <= n_partials <= wall / ((1 + PARTIAL_BACKOFF) * SLOW_S) + 1  # set by the decode time, not the ticks
    q = engine.jobs
    assert q.partials_replaced == 0  # none ever waited for the model, so none was overwritten
    assert q.partials_requested == len(timed.spans) - len(finals) + q.partials_dropped


class SlowDown:
    """Makes a real transcriber `rtf` times slower than real time (it sleeps rtf × the audio's duration before
    each decode), until the test sets rtf to 0."""

    def __init__(self, rtf: float) -> None:
        self.rtf = rtf

    def wrap(self, tr: Transcriber) -> Transcriber:
        inner = tr.transcribe_window

        def slow(audio: Any, options: Any) -> Any:
            time.sleep(self.rtf * len(audio) / SR)
            return inner(audio, options)

        tr.transcribe_window = slow  # type: ignore[method-assign]
        return tr


def test_health_shows_the_lag_and_the_warning_while_the_demo_model_is_slowed(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    texts = sorted(grammar.demo_heldout("en"), key=len)[:4]  # short: ~2.6 s of audio per segment, one every 3.3 s
    wav, _ = write_program(tmp_path / "p.wav", texts)
    monkeypatch.setattr(engine_module, "LAG_WARN_S", 0.5)
    slow = SlowDown(2.0)  # a final takes ~5 s: the next segment's final waits behind it
    daemon = Daemon(config(wav, partial_interval_ms=100))
    load = daemon._load_transcriber
    daemon._load_transcriber = lambda: slow.wrap(load())  # type: ignore[method-assign]

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with Session(daemon) as s:
            await s.until(code_seen("falling_behind"), 120)
            behind = await s.health()
            slow.rtf = 0.0
            await s.until(lambda msgs: len(of("final", msgs)) == len(texts) and bool(of("status", msgs, code="caught_up")),
                          120)
            caught_up = await s.health()
            return behind, caught_up, s.msgs

    behind, caught_up, msgs = asyncio.run(scenario())
    assert behind["decode_lag_s"] > 0 and behind["status"] == "degraded"
    assert any("behind the audio" in w for w in behind["warnings"])
    assert caught_up["decode_lag_s"] == 0.0 and caught_up["status"] == "ok" and caught_up["warnings"] == []
    assert caught_up["last_decode_ms"] > 0
    warning = of("status", msgs, code="falling_behind")[0]
    assert warning["level"] == "warning" and warning["lag_s"] >= 0.5
    finals = of("final", msgs)
    assert [f["segment"] for f in finals] == list(range(len(texts)))
    assert wer(texts, [f["text"] for f in finals]) <= 0.15
