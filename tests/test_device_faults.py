"""Device faults (issue 16) through MicSource's PortAudio seam: a device that vanishes is reported
(`device_lost`, `interrupted`), reopened with backoff, and capture resumes within 2 s of a device returning,
following a new default; the daemon finalizes the open segment when the source is interrupted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from daemon.errors import CaptureError
from daemon.live.app import Daemon
from daemon.live.capture import LOST_AFTER_S, WATCH_S, MicSource
from devtools.daemon_process import DEMO, wer
from devtools.daemon_process import Daemon as DaemonProcess
from devtools.speech import GAP_S, heldout_sentences, program

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
    assert gone < codes[0][1] <= gone + (LOST_AFTER_S + 2 * WATCH_S) * SCALE  # a watch period or two after LOST_AFTER_S
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


class VirtualMic:
    """A private PulseAudio whose default input is the monitor of a null sink that can be unloaded and loaded
    again; a keeper plays zeros into the sink so it renders in small blocks (idle, it sleeps in 2 s blocks)."""

    SINK = ("module-null-sink", "sink_name=vsink", "rate=16000", "channels=1", "format=s16le")

    def __init__(self, tmp_path: Path) -> None:
        for tool in ("pulseaudio", "pactl", "paplay", "pacat"):
            assert shutil.which(tool), f"{tool} missing: .ci/run installs pulseaudio and pulseaudio-utils"
        self.env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
        for v in self.env.values():
            Path(v).mkdir(mode=0o700)
        conf = tmp_path / "pa.conf"
        conf.write_text("load-module module-native-protocol-unix auth-anonymous=1\n")
        self.penv = {**os.environ, **self.env}
        self.pulse = subprocess.Popen(["pulseaudio", "-n", "-F", str(conf), "--daemonize=no", "--exit-idle-time=-1",
                                       "--disallow-exit", f"--log-target=file:{tmp_path / 'pulse.log'}"], env=self.penv)
        deadline = time.monotonic() + 20
        while self.pactl("info", check=False).returncode != 0:
            assert time.monotonic() < deadline and self.pulse.poll() is None, "pulseaudio did not start"
            time.sleep(0.1)
        self.keeper: subprocess.Popen[bytes] | None = None
        self.module = self.load()

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pactl", *args], env=self.penv, capture_output=True, text=True, check=check)

    def load(self) -> str:
        """The null sink appears and its monitor becomes the default input; returns its module id."""
        module = self.pactl("load-module", *self.SINK).stdout.strip()
        self.pactl("set-default-sink", "vsink")
        self.pactl("set-default-source", "vsink.monitor")
        with open("/dev/zero", "rb") as zeros:  # pacat paces itself by the sink
            self.keeper = subprocess.Popen(["pacat", "--playback", "--device=vsink", "--raw", "--format=s16le",
                                            "--rate=16000", "--channels=1", "--latency-msec=20"], stdin=zeros,
                                           env=self.penv)
        return module

    def unload(self) -> None:
        """The input device vanishes (what unplugging a USB microphone does to its PulseAudio source)."""
        self.pactl("unload-module", self.module)
        self.stop_keeper()

    def stop_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.kill()
            self.keeper.wait()
            self.keeper = None

    def play(self, wav: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["paplay", "--device=vsink", str(wav)], env=self.penv)

    def first_audio(self) -> float:
        """When a native recorder, started now, first gets audio from the default input (monotonic time)."""
        rec = subprocess.Popen(["pacat", "--record", "--raw", "--format=s16le", "--rate=16000", "--channels=1",
                                "--latency-msec=20"], stdout=subprocess.PIPE, env=self.penv)
        assert rec.stdout is not None
        rec.stdout.read(2)
        t = time.monotonic()
        rec.kill()
        rec.communicate()
        return t

    def close(self) -> None:
        self.stop_keeper()
        self.pulse.terminate()
        self.pulse.wait(10)


@pytest.fixture()
def virtual_mic(tmp_path: Path) -> Iterator[VirtualMic]:
    mic = VirtualMic(tmp_path)
    yield mic
    mic.close()


def test_a_real_microphone_unloaded_mid_sentence_then_back(virtual_mic: VirtualMic, tmp_path: Path) -> None:
    """The real daemon on a PulseAudio source that vanishes in the middle of a sentence and comes back."""
    s0, s1, s2 = heldout_sentences(6)[3:6]
    before, (d0, d1) = program([s0, s1])
    after, _ = program([s2])
    sf.write(tmp_path / "before.wav", before, 16000, subtype="PCM_16")
    sf.write(tmp_path / "after.wav", after, 16000, subtype="PCM_16")
    msgs: list[tuple[float, dict[str, Any]]] = []
    arrived = asyncio.Event()

    def seen(kind: str, code: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in msgs if m["type"] == kind and code in (None, m.get("code"))]

    async def until(cond: Any, seconds: float) -> None:
        async with asyncio.timeout(seconds * SCALE):
            while not cond():
                arrived.clear()
                await arrived.wait()

    with DaemonProcess("--model", str(DEMO), "--source", "mic", env=virtual_mic.env) as d:
        async def scenario() -> dict[str, float]:
            async with connect(d.url) as ws:
                async def read() -> None:
                    async for raw in ws:
                        msgs.append((time.monotonic(), json.loads(raw)))
                        arrived.set()

                reader = asyncio.create_task(read())
                await asyncio.sleep(1.0)
                player = virtual_mic.play(tmp_path / "before.wav")
                await asyncio.sleep(GAP_S + d0 + GAP_S + d1 / 2)  # in the middle of the second sentence
                cut = time.monotonic()
                await asyncio.to_thread(virtual_mic.unload)
                player.wait()
                await until(lambda: len(seen("final")) >= 2 and seen("status", "device_lost"), 10)
                await asyncio.sleep(1.0)  # the device stays away a while
                virtual_mic.module = await asyncio.to_thread(virtual_mic.load)
                back = time.monotonic()
                audio = await asyncio.to_thread(virtual_mic.first_audio)
                await until(lambda: seen("status", "device_restored"), 10)
                await asyncio.to_thread(virtual_mic.play(tmp_path / "after.wav").wait)
                await until(lambda: len(seen("final")) >= 3, 15)
                reader.cancel()
                return {"cut": cut, "back": back, "audio": audio}

        t = asyncio.run(scenario())
    finals = seen("final")
    print([(round(t_ - t["cut"], 2), m["type"], m.get("code"), m.get("text")) for t_, m in msgs
           if m["type"] in ("final", "status")])
    device = [m["code"] for _, m in msgs if m["type"] == "status" and m["code"].startswith("device_")]
    assert device == ["device_lost", "device_restored"], device  # no flapping, nothing before the unload
    lost, restored = seen("status", "device_lost")[0][0], seen("status", "device_restored")[0][0]
    print(f"device lost {lost - t['cut']:.2f} s after the unload; restored {restored - t['back']:.2f} s after "
          f"the reload, {restored - t['audio']:.2f} s after the device's first audio")
    assert t["cut"] < lost <= t["cut"] + 1.0 * SCALE
    assert wer([s0], [finals[0][1]["text"]]) <= 0.2, finals[0]
    cut_final = finals[1]  # the open segment, finalized from what was captured before the device vanished
    assert cut_final[0] <= t["cut"] + 3.0 * SCALE and cut_final[0] < restored
    words = set(cut_final[1]["text"].lower().strip(".,!?").split())
    assert words & set(s1.lower().split()), (cut_final[1]["text"], s1)
    # The null sink renders its first block 2 s after it is loaded: no client gets audio before that.
    assert t["back"] < restored <= max(t["audio"], t["back"]) + 2.0 * SCALE
    assert len(finals) == 3 and finals[2][0] > restored and wer([s2], [finals[2][1]["text"]]) <= 0.2, finals
