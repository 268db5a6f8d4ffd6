"""Process faults (issue 16): transcripts survive `kill -9` line by line, are private (0600 in 0700), a restart
appends a new file and never overwrites, two daemons never share a file; SIGTERM/SIGINT with `--source -` and
stdin still open finalize the open segment, close clients with 1001 and exit 0 (no exit 134)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import daemon.output.transcripts as transcripts
from daemon.errors import ConfigError
from daemon.output.transcripts import TranscriptWriter, read_finals
from devtools.daemon_process import DEMO, ROOT
from devtools.daemon_process import Daemon as DaemonProcess
from devtools.speech import heldout_sentences, program

SR = 16000
SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))


def final(i: int, text: str = "hello") -> dict[str, Any]:
    return {"type": "final", "seq": i, "segment": i, "start": float(i), "end": i + 0.5, "text": text}


def all_lines(folder: Path) -> dict[Path, list[dict[str, Any]]]:
    """Every JSONL file of a folder, each whole line parsed (a torn or interleaved line fails here).

    A kill -9 may leave the line in flight as an unterminated fragment at the end (Linux copies a write page
    by page and stops at a fatal signal): it is not a line, and read_finals skips it too.
    """
    out = {}
    for p in sorted(folder.glob("transcript-*.jsonl")):
        text = p.read_text(encoding="utf-8")
        whole = text[: text.rfind("\n") + 1]
        out[p] = [json.loads(ln) for ln in whole.splitlines()]
    return out


# -- transcript files ------------------------------------------------------------------------------------------


def test_transcripts_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: other users could read a file made with the default mode
    try:
        w = TranscriptWriter(tmp_path / "new" / "tr")
        w(final(1))
        w.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "tr").stat().st_mode) == 0o700
    assert stat.S_IMODE(w.path.stat().st_mode) == 0o600


def test_a_restart_appends_a_new_file_and_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same second, same pid (a restart that reuses both): the old file stays whole, the new one is another."""
    class Frozen:
        @staticmethod
        def now() -> Any:
            from datetime import datetime

            return datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(transcripts, "datetime", Frozen)
    first = TranscriptWriter(tmp_path)
    first(final(1, "before the restart"))
    first.close()
    second = TranscriptWriter(tmp_path)
    second(final(2, "after"))
    second.close()
    assert first.path != second.path
    files = all_lines(tmp_path)
    assert [m["text"] for m in files[first.path]] == ["before the restart"]
    assert [m["text"] for m in files[second.path]] == ["after"] and len(files) == 2
    assert all(p.name.startswith(f"transcript-20300102-030405-{os.getpid()}") for p in files)


WRITER = """
import sys, time
from daemon.output.transcripts import TranscriptWriter, read_finals
tag, folder = sys.argv[1], sys.argv[2]
time.sleep(1 - time.time() % 1)  # both writers open their file in the same second
w = TranscriptWriter(folder)
for i in range(2000):
    w({"type": "final", "seq": i, "start": 0.0, "end": 1.0, "text": tag * 300})
w.close()
"""


def test_two_daemons_on_one_folder_never_share_a_file(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, tag, str(tmp_path)], cwd=ROOT) for tag in "ab"]
    assert [p.wait(60) for p in procs] == [0, 0]
    files = all_lines(tmp_path)
    assert len(files) == 2
    for lines in files.values():
        assert len(lines) == 2000 and len({m["text"] for m in lines}) == 1  # one writer's lines, whole


KILLED_WRITER = """
import sys
from daemon.output.transcripts import TranscriptWriter, read_finals
w = TranscriptWriter(sys.argv[1])
print(w.path, flush=True)
i = 0
while True:  # lines longer than a buffered file's 8 KiB buffer, as fast as the process can write them
    w({"type": "final", "seq": i, "start": 0.0, "end": 1.0, "text": "x" * (5000 + 7919 * i % 20000)})
    i += 1
"""


def test_kill_9_while_writing_leaves_only_whole_lines(tmp_path: Path) -> None:
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        path = Path(proc.stdout.readline().strip())
        while path.stat().st_size < 2_000_000:
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        lines = all_lines(tmp_path)[path]
        assert [m["seq"] for m in lines] == list(range(len(lines)))  # in order, none missing, none torn
        assert len(read_finals(path)) == len(lines)  # an unterminated fragment after them is skipped


def test_kill_9_of_a_daemon_under_load_loses_no_delivered_final(tmp_path: Path) -> None:
    """A --fast daemon decoding back to back, killed after its third final: every line of its transcript parses
    and every final a client received is in it (a final is written before it is sent)."""
    audio, _ = program(heldout_sentences(10))
    sf.write(tmp_path / "ten.wav", audio, SR)
    received: list[dict[str, Any]] = []
    with DaemonProcess("--model", str(DEMO), "--source", str(tmp_path / "ten.wav"), "--fast", "--transcripts",
                       str(tmp_path / "tr")) as d:
        async def client() -> None:
            async with connect(d.url) as ws:
                async with asyncio.timeout(120 * SCALE):
                    while len(received) < 3:
                        m = json.loads(await ws.recv())
                        if m["type"] == "final":
                            received.append(m)
                d.proc.send_signal(signal.SIGKILL)
        asyncio.run(client())
        assert d.proc.wait(30) == -signal.SIGKILL
    (lines,) = all_lines(tmp_path / "tr").values()
    assert {m["seq"] for m in received} <= {m["seq"] for m in lines}
    assert [m["text"] for m in lines[:3]] == [m["text"] for m in received]


# -- signals with stdin open ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_sentence_with_stdin_open_finalizes_and_exits_0(tmp_path: Path, sig: int) -> None:
    """stdin stays open (a producer still attached): the sentence heard so far becomes a final, the client is
    closed with 1001, the process exits 0 (before: "Fatal Python error: _enter_buffered_busy", exit 134)."""
    audio, durations = program(heldout_sentences(1))
    half = audio[: int((1.5 + durations[0] * 0.7) * SR)]  # the gap, then most of the sentence
    pcm = (half * 32767).astype("<i2").tobytes()
    msgs: list[dict[str, Any]] = []
    signalled: list[int] = []
    with DaemonProcess("--model", str(DEMO), "--source", "-", stdin=subprocess.PIPE) as d:
        assert d.proc.stdin is not None
        d.proc.stdin.write(pcm)
        d.proc.stdin.flush()

        async def client() -> int | None:
            async with connect(d.url) as ws:
                try:
                    async with asyncio.timeout(60 * SCALE):
                        while True:
                            msgs.append(json.loads(await ws.recv()))
                            if msgs[-1]["type"] == "partial" and not signalled:
                                d.proc.send_signal(sig)
                                signalled.append(sig)
                except ConnectionClosed as e:
                    return e.rcvd.code if e.rcvd is not None else None
            return None

        code = asyncio.run(client())
        rc = d.proc.wait(30 * SCALE)
        d.proc.stdin.close()
        log = d.log()
    finals = [m for m in msgs if m["type"] == "final"]
    assert rc == 0 and "Fatal Python error" not in log, log
    assert code == 1001 and len(finals) == 1 and finals[0]["text"], msgs


def test_read_finals_skips_only_a_fragment_at_the_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = json.dumps(final(1)) + "\n"
    (tmp_path / "torn.jsonl").write_text(whole + json.dumps(final(2))[:30])
    assert [s.start for s in read_finals(tmp_path / "torn.jsonl")] == [1.0]
    assert "cut short" in caplog.text
    (tmp_path / "middle.jsonl").write_text(json.dumps(final(2))[:30] + "\n" + whole)
    with pytest.raises(ConfigError, match=":1: not a transcript line"):
        read_finals(tmp_path / "middle.jsonl")
