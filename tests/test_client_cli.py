"""clients/cli.py as a subprocess: against a fake daemon (a real websockets server) and in --follow mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from daemon.live.messages import PROTOCOL, Final, Hello, Partial, Settings, SpeechStarted, SpeechStopped

CLI = Path(__file__).parents[1] / "clients" / "cli.py"
MS = float(os.environ.get("TEST_TIME_SCALE", "1")) / 1000  # scale up on slow machines
WAIT_S = 5000 * MS  # the longest any one step may take

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


FINALS = [Final(i, 2.0 * i + 1, 2.0 * i + 2, text, "en", "eos") for i, text in enumerate(("alpha", "bravo", "charlie", "delta"))]
SEQS = [3, 7, 9, 11]  # seq of each final above on the wire
SETTINGS = Settings("en", True, False)
REJECT = "reject"  # a script entry: answer the handshake with HTTP 503, as a daemon still starting might


def final(i: int) -> dict[str, Any]:
    return FINALS[i].to_dict(SEQS[i])


def hello(seq: int, finals: list[dict[str, Any]]) -> str:
    return Hello(PROTOCOL, "fake", "onnx", SETTINGS, finals).to_json(seq)


SCRIPTS: list[Any] = [
    REJECT,
    (  # a first session: two segments, then the daemon goes away
        [hello(0, []),
         SpeechStarted(0, 1.0).to_json(1), Partial(0, 1.0, "al", "pha?").to_json(2), FINALS[0].to_json(3),
         SpeechStopped(0, 2.0).to_json(4),
         SpeechStarted(1, 3.0).to_json(5), Partial(1, 3.0, "bra", "vo").to_json(6), FINALS[1].to_json(7)],
        1001,
    ),
    (  # back: hello repeats alpha and bravo and has charlie, missed in between; then a live final
        [hello(9, [final(0), final(1), final(2)]),
         Partial(3, 7.0, "del", "").to_json(10), FINALS[3].to_json(11)],
        1011,
    ),
    (  # a restarted daemon: its counter began again, so its seq 1 is new
        [hello(1, [Final(0, 0.5, 1.5, "echo", "en", "eos").to_dict(1)])],
        None,
    ),
]


class FakeDaemon:
    """Plays one script entry per connection: send its messages, then close with its code (None: stay open)."""

    def __init__(self, scripts: list[Any]) -> None:
        self.scripts = list(scripts)

    def process_request(self, connection: ServerConnection, request: Any) -> Any:
        if self.scripts and self.scripts[0] == REJECT:
            self.scripts.pop(0)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        messages, code = self.scripts.pop(0) if self.scripts else ([], None)
        for m in messages:
            await ws.send(m)
        if code is None:
            await ws.wait_closed()
        else:
            await ws.close(code)


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CLI), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def read_lines(proc: asyncio.subprocess.Process, n: int) -> list[str]:
    """The next n lines of the client's stdout, each within WAIT_S."""
    assert proc.stdout is not None
    lines = []
    for _ in range(n):
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
        assert line, f"stdout ended after {lines}"
        lines.append(line.decode().rstrip("\n"))
    return lines


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """Ctrl-C the client; it must exit quietly with 0. Returns the rest of stdout, and stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    return out.decode(), err.decode()


def expected_json() -> list[tuple[str, int]]:
    return [("partial", 2), ("final", 3), ("partial", 6), ("final", 7), ("final", 9), ("partial", 10),
            ("final", 11), ("final", 1)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["[00:01] alpha", "[00:03] bravo", "[00:05] charlie", "[00:07] delta", "[00:00] echo"]),
        (["--partials"], ["~ alpha?", "[00:01] alpha", "~ bravo", "[00:03] bravo", "[00:05] charlie", "~ del",
                          "[00:07] delta", "[00:00] echo"]),
        (["--partials", "--json"], expected_json()),
    ],
    ids=["finals", "partials", "json"],
)
async def test_reconnects_and_prints_each_final_once(args: list[str], expected: list[Any]) -> None:
    daemon = FakeDaemon(SCRIPTS)
    async with serve(daemon.handler, "127.0.0.1", 0, process_request=daemon.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        proc = await start_cli("--url", f"ws://127.0.0.1:{port}", *args)
        try:
            lines = await read_lines(proc, len(expected))
            rest, err = await interrupt(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if args[-1:] == ["--json"]:
        lines = [(m["type"], m["seq"]) for m in map(json.loads, lines)]
    assert lines == expected
    assert rest == ""  # nothing printed twice after the last final
    assert not daemon.scripts, "the client did not make every connection"
    assert err.count("reconnecting") == 3, err  # after the 503, the 1001 and the 1011
    assert "restarted" in err


async def test_follow_prints_a_growing_file(tmp_path: Path) -> None:
    path = tmp_path / "transcript.jsonl"  # does not exist yet when the client starts
    lines = [json.dumps(final(i)) for i in range(4)]
    proc = await start_cli("--follow", str(path))
    try:
        note = await asyncio.wait_for(proc.stderr.readline(), WAIT_S)  # it has looked and found no file
        assert b"waiting for" in note, note
        with path.open("w") as f:
            f.write(lines[0] + "\n" + lines[1][:20])  # a line cut in two: it waits for its end
            f.flush()
            assert await read_lines(proc, 1) == ["[00:01] alpha"]
            f.write(lines[1][20:] + "\n")
            f.flush()
            assert await read_lines(proc, 1) == ["[00:03] bravo"]
            f.write(lines[2] + "\n\n" + lines[3] + "\n")
            f.flush()
            assert await read_lines(proc, 2) == ["[00:05] charlie", "[00:07] delta"]
        rest, _ = await interrupt(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rest == ""


async def test_follow_json_prints_existing_lines_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "transcript.jsonl"
    lines = [json.dumps(final(i), ensure_ascii=False) for i in range(2)]
    path.write_text("\n".join(lines) + "\n")
    proc = await start_cli("--follow", str(path), "--json")
    try:
        assert await read_lines(proc, 2) == lines
        rest, _ = await interrupt(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rest == ""


def test_tty_partials_rewrite_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.cli import Printer, handle

    monkeypatch.setenv("COLUMNS", "20")  # shutil.get_terminal_size reads it first
    printer = Printer(as_json=False, partials=True, tty=True)
    for msg in (Partial(0, 61.0, "al", "pha?").to_json(2), Partial(0, 61.0, "alph", "a").to_json(3),
                Partial(0, 61.0, "alpha beta", " gamma").to_json(4), FINALS[0].to_json(5), FINALS[0].to_json(5)):
        handle(printer, msg)
    clear, dim, reset = "\r\x1b[K", "\x1b[2m", "\x1b[0m"
    assert capsys.readouterr().out == (
        f"[01:01] al{dim}pha?{reset}"
        f"{clear}[01:01] alph{dim}a{reset}"
        f"{clear}[01:01] …beta{dim} gamma{reset}"  # cut to the terminal's 20 columns, the tail kept
        f"{clear}[00:01] alpha\n"
    )
