"""The daemon as a whole (daemon.live.app) on the demo model, in this process or as `serve` in a subprocess:
isolated listener failures, supervision, startup checks, signals and the shutdown contract, and the commands
over a real websocket (configure, finalize, pause/resume with the stream clock)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from daemon.errors import BundleError, ConfigError
from daemon.live.app import Daemon, install_stop_handlers, run_daemon
from daemon.live.config import DaemonConfig
from daemon.live.engine import CaptionEngine
from daemon.output.transcripts import TranscriptWriter
from devtools.daemon_process import DEMO, ROOT, wer
from devtools.daemon_process import Daemon as DaemonProcess
from devtools.speech import GAP_S, espeak, heldout_sentences, program

SR = 16000
SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))  # stretch every wait on a slow machine


def write_program(path: Path, texts: list[str]) -> tuple[Path, list[float]]:
    audio, durations = program(texts)
    sf.write(path, audio, SR)
    return path, durations


def config(source: Path, **kw: Any) -> DaemonConfig:
    return DaemonConfig(model=str(DEMO), backend="onnx", source=str(source), port=0, **kw)


class Session:
    """A Daemon running in this event loop, with one websocket client that connected before the model loaded
    (the model load waits for it), so the client sees every event."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.msgs: list[dict[str, Any]] = []
        self._gate = threading.Event()
        load = daemon._load_transcriber
        daemon._load_transcriber = lambda: (self._gate.wait(30 * SCALE), load())[1]  # type: ignore[method-assign]
        self.close_code: int | None = None

    async def __aenter__(self) -> Session:
        self._run = asyncio.create_task(self.daemon.run())
        await asyncio.wait_for(self.daemon.listening.wait(), 30 * SCALE)
        self.started = time.monotonic()  # ≈ the start of the stream clock (the source started just before)
        self.ws: ClientConnection = await connect(f"ws://127.0.0.1:{self.daemon.server.port}")
        self.msgs.append(json.loads(await self.ws.recv()))  # hello
        self._gate.set()
        return self

    async def until(self, done: Callable[[list[dict[str, Any]]], bool], within_s: float = 60) -> list[dict[str, Any]]:
        """Read messages until done(all messages so far) holds; fails after `within_s` (scaled) seconds."""
        async def read() -> None:
            while not done(self.msgs):
                self.msgs.append(json.loads(await self.ws.recv()))

        await asyncio.wait_for(read(), within_s * SCALE)
        return self.msgs

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.daemon.server.port}/health?from=test"
        return await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(url, timeout=5).read()))

    async def __aexit__(self, *exc: object) -> None:
        self._gate.set()
        self.daemon.stop()
        try:
            while True:  # what the shutdown still delivers, then the close frame
                self.msgs.append(json.loads(await asyncio.wait_for(self.ws.recv(), 30 * SCALE)))
        except ConnectionClosed as e:
            self.close_code = e.rcvd.code if e.rcvd is not None else None
        await asyncio.wait_for(self._run, 30 * SCALE)


def of(kind: str, msgs: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())]


def code_seen(code: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda msgs: bool(of("status", msgs, code=code))


# -- acceptance: a failing transcript listener -----------------------------------------------------------------


def test_a_transcript_writer_that_always_fails_does_not_stop_captions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every transcript write raises (a full disk): all five sentences still reach the client as finals, the
    failure is one `status` warning and shows in /health, and the log has it once, with its traceback."""
    writes: list[dict[str, Any]] = []

    def full_disk(self: TranscriptWriter, message: dict[str, Any]) -> None:
        writes.append(message)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TranscriptWriter, "__call__", full_disk)
    texts = heldout_sentences(5)
    wav, _ = write_program(tmp_path / "five.wav", texts)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        daemon = Daemon(config(wav, fast=True, transcripts=str(tmp_path / "tr")))
        async with Session(daemon) as s:
            msgs = await s.until(code_seen("source_ended"), within_s=120)
            return msgs, await s.health()

    with caplog.at_level(logging.ERROR):
        msgs, health = asyncio.run(scenario())
    finals = of("final", msgs)
    assert len(finals) == 5 and wer(texts, [f["text"] for f in finals]) <= 0.10, finals
    assert len(writes) >= 5  # the writer was tried for every message
    warnings = of("status", msgs, code="listener_failed")
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "TranscriptWriter" in warnings[0]["message"] and "No space left" in warnings[0]["message"]
    assert health["status"] == "degraded" and len(health["warnings"]) == 1
    assert "No space left" in health["warnings"][0]
    logged = [r for r in caplog.records if "TranscriptWriter" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


# -- supervision ---------------------------------------------------------------------------------------------


def test_a_task_that_dies_stops_the_daemon_with_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The ticker raises: the daemon does not go on half-alive; run_daemon logs the traceback and returns 1."""
    def broken_tick(self: CaptionEngine) -> None:
        raise RuntimeError("the ticker broke")

    monkeypatch.setattr(CaptionEngine, "tick", broken_tick)
    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config(wav, partial_interval_ms=50))))
    with caplog.at_level(logging.CRITICAL):
        thread.start()  # in a thread: no signal handlers there, the fallback is not needed for this test
        thread.join(60 * SCALE)
    assert result == [1]
    failed = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert failed and "the ticker broke" in "".join(_traceback(r) for r in failed)


def _traceback(record: logging.LogRecord) -> str:
    import traceback

    return "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""


# -- startup checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "match"), [(257, "exceeds what the decoder cache holds"),
                                               (1000, "exceeds what the decoder cache holds")])
def test_max_new_tokens_beyond_the_cache_is_refused_before_loading(tmp_path: Path, tokens: int, match: str) -> None:
    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))
    with pytest.raises(ConfigError, match=match):
        Daemon(config(wav, max_new_tokens=tokens))
    Daemon(config(wav, max_new_tokens=256))  # what the demo bundle's cache leaves after its 10-token prompt


def test_a_bundle_at_another_sample_rate_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["audio"]["sample_rate"] = 8000
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))
    with pytest.raises((BundleError, ConfigError), match="16000 Hz"):
        Daemon(DaemonConfig(model=str(bundle), source=str(wav), port=0))


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout * SCALE)


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve("--model", str(DEMO), "--source", str(wav), "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "loaded" not in proc.stderr  # refused before loading
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], proc.stderr


@pytest.mark.parametrize("tokens", ["0", "300"])
def test_max_new_tokens_out_of_range_is_one_line_and_exit_2(tmp_path: Path, tokens: str) -> None:
    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))
    proc = _serve("--model", str(DEMO), "--source", str(wav), "--max-new-tokens", tokens)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "listening" not in proc.stderr and "max-new-tokens" in proc.stderr


# -- signals and the shutdown contract ---------------------------------------------------------------------------


def test_without_add_signal_handler_sigterm_still_stops_the_daemon(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As on Windows, where loop.add_signal_handler raises NotImplementedError: signal.signal takes over."""
    def unsupported(self: object, sig: int, callback: object, *args: object) -> None:
        raise NotImplementedError

    wav, _ = write_program(tmp_path / "one.wav", heldout_sentences(1))

    async def scenario() -> list[dict[str, Any]]:
        monkeypatch.setattr(type(asyncio.get_running_loop()), "add_signal_handler", unsupported)
        daemon = Daemon(config(wav))
        run = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.listening.wait(), 30 * SCALE)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(run, 30 * SCALE)
        return []

    before = signal.getsignal(signal.SIGTERM)
    asyncio.run(scenario())
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was put back


def test_install_stop_handlers_falls_back_to_signal_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> bool:
        def unsupported(self: object, sig: int, callback: object, *args: object) -> None:
            raise NotImplementedError

        monkeypatch.setattr(type(asyncio.get_running_loop()), "add_signal_handler", unsupported)
        stopped = asyncio.Event()
        restore = install_stop_handlers(stopped.set)
        try:
            signal.raise_signal(signal.SIGINT)
            await asyncio.wait_for(stopped.wait(), 10)
        finally:
            restore()
        return stopped.is_set()

    assert asyncio.run(scenario())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_delivers_the_open_segment_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    """The contract of docs/protocol.md: SIGTERM mid-sentence → that sentence's final reaches the client →
    the connection closes with 1001 → the process exits 0."""
    texts = heldout_sentences(1)
    wav, durations = write_program(tmp_path / "one.wav", texts)
    with DaemonProcess("--model", str(DEMO), "--source", str(wav)) as d:
        async def client() -> tuple[list[dict[str, Any]], int | None]:
            msgs: list[dict[str, Any]] = []
            async with connect(d.url) as ws:
                try:
                    while True:
                        msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 60 * SCALE)))
                        if len(of("partial", msgs)) == 2:  # mid-sentence: it has been heard for a while
                            d.proc.send_signal(signal.SIGTERM)
                except ConnectionClosed as e:
                    return msgs, e.rcvd.code if e.rcvd is not None else None
            return msgs, None

        msgs, code = asyncio.run(client())
        rc = d.proc.wait(30 * SCALE)
        log = d.log()
    finals = of("final", msgs)
    assert len(finals) == 1 and finals[0]["text"], msgs
    assert finals[0]["end"] < GAP_S + durations[0] - 0.2  # cut short by the shutdown, not by the pause after it
    assert code == 1001
    assert rc == 0, log
    assert "Traceback" not in log


# -- commands over a real websocket ------------------------------------------------------------------------------


def test_configure_and_finalize_over_a_websocket(tmp_path: Path) -> None:
    texts = heldout_sentences(2)
    wav, durations = write_program(tmp_path / "two.wav", texts)

    async def scenario() -> list[dict[str, Any]]:
        async with Session(Daemon(config(wav))) as s:
            await s.until(code_seen("model_loaded"))  # before it, commands get "the model is still loading"
            await s.send({"type": "configure", "language": "es", "punctuation": False})
            await s.until(code_seen("settings_changed"))
            await s.send({"type": "configure", "language": "xx"})
            await s.until(lambda m: bool(of("error", m)))
            await s.send({"type": "configure", "language": "en"})
            await s.until(lambda m: len(of("status", m, code="settings_changed")) == 2)
            await s.until(lambda m: bool(of("speech_started", m)))
            await s.send({"type": "finalize"})
            await s.until(lambda m: bool(of("final", m)))
            return s.msgs

    msgs = asyncio.run(scenario())
    changed = of("status", msgs, code="settings_changed")
    assert changed[0]["settings"] == {"language": "es", "punctuation": False, "paused": False}
    assert changed[1]["settings"] == {"language": "en", "punctuation": False, "paused": False}
    assert of("error", msgs)[0]["code"] == "bad_value" and "unknown language" in of("error", msgs)[0]["message"]
    final = of("final", msgs)[0]
    assert final["segment"] == 0 and final["language"] == "en"
    assert final["end"] - final["start"] < durations[0] - 0.5  # closed by `finalize`, well before the sentence ended


def test_pause_and_resume_over_a_websocket_keep_the_stream_clock(tmp_path: Path) -> None:
    """Sentence 1 is captioned; the client pauses through sentence 2 (no events for it) and resumes in the
    silence before sentence 3, which is then reported at its true time in the stream (the clock ran on)."""
    texts = heldout_sentences(3)
    gap = np.zeros(int(3.0 * SR), np.float32)
    voices = [espeak(t, "en-us", 150) * 0.8 for t in texts]
    audio = np.concatenate([gap, voices[0], gap, voices[1], gap, voices[2], gap])
    sf.write(tmp_path / "three.wav", audio, SR)
    starts = [3.0, 6.0 + len(voices[0]) / SR, 9.0 + (len(voices[0]) + len(voices[1])) / SR]
    resume_at = starts[2] - 1.5  # in the middle of the silence before sentence 3

    async def scenario() -> tuple[list[dict[str, Any]], int, int]:
        async with Session(Daemon(config(tmp_path / "three.wav"))) as s:
            await s.until(lambda m: bool(of("final", m)))
            await s.send({"type": "pause"})
            await s.until(code_seen("paused"))
            paused_at = len(s.msgs)
            await asyncio.sleep(max(0.0, s.started + resume_at - time.monotonic()))
            await s.send({"type": "resume"})
            await s.until(code_seen("resumed"))
            resumed_at = len(s.msgs)
            await s.until(lambda m: len(of("final", m)) == 2)
            return s.msgs, paused_at, resumed_at

    msgs, paused_at, resumed_at = asyncio.run(scenario())
    assert of("status", msgs, code="paused")[0]["settings"]["paused"] is True
    assert not [m for m in msgs[paused_at:resumed_at] if m["type"] in ("speech_started", "partial", "final")]
    started = of("speech_started", msgs[resumed_at:])
    assert len(started) == 1
    # the segmenter's 300 ms pre-roll may reach before the first speech; espeak starts with a little silence
    assert starts[2] - 0.4 <= started[0]["start"] <= starts[2] + 0.4, (started, starts)
    assert wer(texts[2:], [of("final", msgs)[1]["text"]]) <= 0.15


def test_the_silence_watch_warns_once_per_run_of_digital_silence() -> None:
    from daemon.live.capture import SilenceWatch

    watch = SilenceWatch(seconds=5.0)
    zeros, sound = np.zeros(480, np.float32), np.full(480, 1e-4, np.float32)
    warnings = [watch.check(zeros) for _ in range(int(5.1 * SR / 480))]
    assert sum(w is not None for w in warnings) == 1 and "digital silence for 5 s" in next(w for w in warnings if w)
    assert watch.check(sound) is None  # sound resets it: the next long silence warns again
    assert sum(watch.check(zeros) is not None for _ in range(int(5.1 * SR / 480))) == 1


def test_a_silent_microphone_is_a_lasting_problem_until_sound_returns() -> None:
    """/health lists it (so `agent status` can show a missing permission), and sound ends it with an info."""
    from daemon.live.capture import SilenceWatch, Source

    source, statuses = Source(), []
    source.on_status = lambda level, code, message: statuses.append((level, code))
    watch = SilenceWatch(seconds=5.0)
    zeros, sound = np.zeros(1440, np.float32), np.full(1440, 1e-4, np.float32)
    for _ in range(int(4.9 * SR / 1440)):
        watch.observe(source, zeros)
    assert statuses == [] and source.problems == {}
    for _ in range(int(0.3 * SR / 1440) + 1):
        watch.observe(source, zeros)
    assert statuses == [("warning", "silent_microphone")]
    assert "digital silence for 5 s" in source.problems["silent_microphone"]
    watch.observe(source, sound)
    assert statuses[-1] == ("info", "microphone_sound") and source.problems == {}
    watch.observe(source, sound)
    assert len(statuses) == 2  # said once
