"""Device faults (issue 16) through MicSource's PortAudio seam: a device that vanishes is reported
(`device_lost`, `interrupted`), reopened with backoff, and capture resumes within 2 s of a device returning,
following a new default; the daemon finalizes the open segment when the source is interrupted."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import types
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import CaptureError
from daemon.live.app import Daemon
from daemon.live.capture import MicSource

SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))


class FakeStream:
    """Calls back with 30 ms blocks of a tone from its own thread while its device is present."""

    def __init__(self, pa: FakePortAudio, rate: int, callback: Any) -> None:
        self.pa, self.rate, self.callback, self.stopped = pa, rate, callback, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        n = self.rate * 30 // 1000
        while not self.stopped and self.pa.present:
            self.callback(np.full(n, 0.1, np.float32))
            time.sleep(0.03)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.stopped = True


class FakePortAudio:
    """The device list and streams of a machine whose default input can vanish and come back."""

    def __init__(self) -> None:
        self.present, self.default = True, {"name": "Built-in", "default_samplerate": 16000}
        self.rescans = 0
        self.opened: list[str] = []

    def rescan(self) -> None:
        self.rescans += 1

    def resolve(self, device: str | None) -> tuple[int | None, dict[str, Any]]:
        if not self.present:
            raise CaptureError("no audio input device found")
        return None, self.default

    def open(self, index: int | None, rate: int, callback: Any, finished: Any) -> FakeStream:
        if not self.present:
            raise CaptureError("Device unavailable")
        self.opened.append(self.default["name"])
        return FakeStream(self, rate, callback)


def test_a_vanished_device_is_reported_and_capture_resumes_on_the_new_default() -> None:
    pa = FakePortAudio()
    statuses: list[tuple[float, str, str]] = []
    frames: list[tuple[float, npt.NDArray[np.float32]]] = []

    async def scenario() -> tuple[float, float, MicSource]:
        src = MicSource(None, portaudio=pa)  # type: ignore[arg-type]
        t0 = time.monotonic()
        src.on_status = lambda level, code, msg: statuses.append((time.monotonic() - t0, code, msg))
        src.start()

        async def read() -> None:
            async for f in src.frames():
                frames.append((time.monotonic() - t0, f))

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        pa.present = False  # unplugged mid-speech
        gone = time.monotonic() - t0
        await asyncio.sleep(1.5)
        assert src.interrupted and "device_lost" in src.problems
        pa.default = {"name": "USB headset", "default_samplerate": 48000}  # a new default input appears
        pa.present = True
        back = time.monotonic() - t0
        await asyncio.sleep(2.0 * SCALE + 0.5)  # the timestamps say when it resumed; this only bounds the wait
        src.close()
        reader.cancel()
        return gone, back, src

    gone, back, src = asyncio.run(scenario())
    codes = [(code, t) for t, code, _ in statuses]
    assert [c for c, _ in codes] == ["device_lost", "device_restored"], statuses
    assert gone < codes[0][1] <= gone + 1.0 * SCALE  # noticed within LOST_AFTER_S plus a watch period or two
    assert back < codes[1][1] <= back + 2.0 * SCALE  # resumed within 2 s of the device returning
    resumed = [t for t, _ in frames if t > back]
    assert resumed and resumed[0] <= back + 2.0 * SCALE
    assert pa.opened == ["Built-in", "USB headset"] and pa.rescans >= 1
    assert "USB headset (48000 Hz)" in src.name and "USB headset" in statuses[1][2]
    assert not src.problems and all(len(f) == 480 for _, f in frames)


def test_the_daemon_finalizes_the_open_segment_when_the_source_is_interrupted() -> None:
    class Engine:
        finalized = 0

        def finalize(self) -> None:
            self.finalized += 1

    source = types.SimpleNamespace(interrupted=False, stalled_seconds=0.0, problems={}, name="mic")
    engine = Engine()

    async def scenario() -> None:
        watch = asyncio.create_task(Daemon._watch_source(types.SimpleNamespace(source=source), engine))  # type: ignore[arg-type]
        await asyncio.sleep(0.7)
        assert engine.finalized == 0
        source.interrupted = True
        await asyncio.sleep(1.2)
        assert engine.finalized == 1  # once per loss, not once per poll
        source.interrupted = False
        await asyncio.sleep(0.7)
        watch.cancel()

    asyncio.run(scenario())
    assert engine.finalized == 1
