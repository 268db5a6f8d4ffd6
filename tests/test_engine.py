"""CaptionEngine with a scripted model: partial/final rules, coalescing, commands (no audio device, no network)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from daemon.errors import ConfigError
from daemon.live.config import DaemonConfig
from daemon.live.engine import CaptionEngine
from daemon.live.messages import Final, Partial, SpeechStarted, SpeechStopped, Status
from daemon.model.decode import DecodeResult
from daemon.model.transcriber import load_transcriber
import itertools

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()
FRAME = 480


class ScriptedModel:
    """Wraps a real tiny transcriber; decoding returns the first len(audio)/0.5 s words of WORDS."""

    def __init__(self, real, delay: float = 0.0, jitter_last: bool = True) -> None:
        self.real, self.delay, self.jitter_last = real, delay, jitter_last
        self.bundle, self.tokenizer = real.bundle, real.tokenizer
        self.calls: list[int] = []

    def transcribe_window(self, audio, options):
        time.sleep(self.delay)
        self.calls.append(len(audio))
        n = max(1, min(len(WORDS), len(audio) // 8000))
        words = WORDS[:n]
        if self.jitter_last and len(self.calls) % 2:  # the last word flickers between decodes
            words = [*words[:-1], words[-1].upper()]
        return [], DecodeResult(tuple(self.tokenizer.encode(" ".join(words))), (), "eos")


def loud(frame: bytes, rate: int) -> bool:
    """A stand-in for webrtcvad: the test's tones are speech, silence is not."""
    return bool(np.abs(np.frombuffer(frame, "<i2")).mean() > 300)


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def run_engine(model, audio: np.ndarray, config: DaemonConfig, tick_every: int = 10) -> list:
    events: list = []
    engine = CaptionEngine(config, model, events.append, is_speech=loud)
    worker = asyncio.create_task(engine.run_worker())
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        engine.push(audio[i : i + FRAME])
        if (i // FRAME) % tick_every == 0:
            engine.tick()
        await asyncio.sleep(0.002)
    engine.finalize()
    await engine.drain()
    worker.cancel()
    engine.close()
    return events


@pytest.fixture(scope="module")
def real(tiny_bundles):
    return load_transcriber(str(tiny_bundles["a"]), "onnx", dither=0.0)


def stream() -> np.ndarray:
    silence = np.zeros(16000, np.float32)
    return np.concatenate([silence, speech(3.0), silence, speech(2.0), silence])


def test_protocol_order_one_final_per_segment(real) -> None:
    events = asyncio.run(run_engine(ScriptedModel(real), stream(), DaemonConfig()))
    kinds = [type(e) for e in events]
    assert kinds.count(SpeechStarted) == kinds.count(SpeechStopped) == kinds.count(Final) == 2
    for seg in (0, 1):
        mine = [e for e in events if getattr(e, "segment", None) == seg]
        order = [type(e) for e in mine]
        assert order[0] is SpeechStarted and order[-2:] == [SpeechStopped, Final]
        assert all(k is Partial for k in order[1:-2])
    finals = [e for e in events if isinstance(e, Final)]
    assert finals[0].start < finals[0].end <= finals[1].start < finals[1].end  # monotonic times


def test_stable_prefix_only_grows_and_is_a_prefix(real) -> None:
    events = asyncio.run(run_engine(ScriptedModel(real), stream(), DaemonConfig()))
    partials = [e for e in events if isinstance(e, Partial) and e.segment == 0]
    assert len(partials) >= 2
    stables = [p.stable.split() for p in partials]
    for a, b in itertools.pairwise(stables):
        assert b[: len(a)] == a  # never rewritten
    assert len(stables[-1]) >= 3  # it did grow
    assert all((p.stable + " " + p.unstable).split()[0] in ("one", "ONE") for p in partials)


def test_partials_coalesce_and_finals_are_never_dropped(real) -> None:
    model = ScriptedModel(real, delay=0.15)  # slower than audio arrives
    audio = np.concatenate([np.concatenate([speech(1.2), np.zeros(12000, np.float32)]) for _ in range(6)])
    events = asyncio.run(run_engine(model, audio, DaemonConfig(), tick_every=2))
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.segment for f in finals] == list(range(6))
    n_partial_requests = len(audio) // FRAME // 2
    assert len(model.calls) < n_partial_requests  # coalesced: far fewer decodes than requests


def test_configure_validates_and_announces(real) -> None:
    events: list = []
    engine = CaptionEngine(DaemonConfig(), real, events.append)
    engine.configure("es", False)
    assert engine.settings.language == "es" and not engine.settings.punctuation
    assert isinstance(events[-1], Status) and events[-1].settings == engine.settings
    with pytest.raises(ConfigError, match="unknown language"):
        engine.configure("xx", None)
    assert engine.settings.language == "es"
    engine.close()


def test_pause_finalizes_and_drops_audio(real) -> None:
    async def scenario() -> list:
        events: list = []
        engine = CaptionEngine(DaemonConfig(), ScriptedModel(real), events.append, is_speech=loud)
        worker = asyncio.create_task(engine.run_worker())
        s = speech(1.5)
        for i in range(0, len(s), FRAME):
            engine.push(s[i : i + FRAME])
        engine.pause()
        for i in range(0, len(s), FRAME):
            engine.push(s[i : i + FRAME])  # ignored while paused
        await engine.drain()
        worker.cancel()
        engine.close()
        return events

    events = asyncio.run(scenario())
    assert sum(isinstance(e, Final) for e in events) == 1
    assert any(isinstance(e, Status) and e.code == "paused" for e in events)


def test_silent_microphone_warning(real) -> None:
    events: list = []
    engine = CaptionEngine(DaemonConfig(), real, events.append)
    for _ in range(int(5.1 * 16000 / FRAME)):
        engine.push(np.zeros(FRAME, np.float32), check_silent_mic=True)
    warnings = [e for e in events if isinstance(e, Status) and e.code == "silent_microphone"]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    engine.close()


def test_stable_plus_unstable_is_the_whole_text(real) -> None:
    events = asyncio.run(run_engine(ScriptedModel(real, jitter_last=False), stream(), DaemonConfig()))
    partials = [e for e in events if isinstance(e, Partial) and e.stable and e.unstable]
    assert partials
    for p in partials:
        text = p.stable + p.unstable
        assert text.split() == p.stable.split() + p.unstable.split() and "  " not in text


def test_a_failed_decode_still_gives_one_final(real) -> None:
    class Broken(ScriptedModel):
        def transcribe_window(self, audio, options):
            raise RuntimeError("the runtime fell over")

    events = asyncio.run(run_engine(Broken(real), stream(), DaemonConfig()))
    finals = [e for e in events if isinstance(e, Final)]
    assert [(f.text, f.stop_reason) for f in finals] == [("", "error"), ("", "error")]
