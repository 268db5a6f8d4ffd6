"""Terminal client: print the daemon's finals (and optionally partials), or follow a transcript file.

    python clients/cli.py [--url ws://127.0.0.1:8765] [--partials] [--json] [--follow FILE.jsonl]

Written only against the wire format in docs/protocol.md; it imports nothing from daemon/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from daemon import __version__

DEFAULT_URL = "ws://127.0.0.1:8765"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
FOLLOW_POLL_S = 0.2

CLEAR_LINE = "\r\x1b[K"
DIM, RESET = "\x1b[2m", "\x1b[0m"


def mmss(seconds: float) -> str:
    """Stream time as [mm:ss] (minutes keep counting past 59)."""
    s = int(seconds)
    return f"[{s // 60:02d}:{s % 60:02d}]"


def tail(stable: str, unstable: str, width: int) -> tuple[str, str]:
    """The last `width` characters of stable + unstable, split the same way ("…" marks a cut)."""
    if len(stable) + len(unstable) <= width:
        return stable, unstable
    keep = max(width - 1, 0)
    text = (stable + unstable)[len(stable) + len(unstable) - keep:]
    n_unstable = min(len(unstable), keep)
    return "…" + text[: keep - n_unstable], text[keep - n_unstable:]


class Printer:
    """Prints finals once each, in seq order, and the current partial (in place on a terminal)."""

    def __init__(self, as_json: bool, partials: bool, tty: bool) -> None:
        self.as_json, self.partials, self.tty = as_json, partials, tty
        self.last_seq = -1  # highest final seq printed
        self.line_open = False  # a partial is drawn on the current terminal line

    def _write(self, text: str, keep_open: bool = False) -> None:
        if self.line_open:
            text = CLEAR_LINE + text
        self.line_open = keep_open
        sys.stdout.write(text)
        sys.stdout.flush()

    def final(self, msg: dict[str, Any], raw: str | None = None) -> None:
        """Show a final unless one with this seq or a later one was shown (hello.finals repeat what we have)."""
        seq = msg.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        self.show(msg, raw)

    def show(self, msg: dict[str, Any], raw: str | None = None) -> None:
        if self.as_json:
            self._write((raw if raw is not None else json.dumps(msg, ensure_ascii=False)) + "\n")
        else:
            self._write(f"{mmss(msg.get('start', 0.0))} {msg.get('text', '')}\n")

    def partial(self, msg: dict[str, Any], raw: str) -> None:
        if not self.partials:
            return
        stable, unstable = msg.get("stable", ""), msg.get("unstable", "")
        if self.as_json:
            self._write(raw + "\n")
        elif self.tty:
            prefix = mmss(msg.get("start", 0.0)) + " "
            # one terminal row at most, or "\r" would not get back to the start of the partial
            stable, unstable = tail(stable, unstable, shutil.get_terminal_size().columns - len(prefix) - 1)
            self._write(f"{prefix}{stable}{DIM}{unstable}{RESET}", keep_open=True)
        else:
            self._write(f"~ {stable}{unstable}\n")

    def end_line(self) -> None:
        """Leave the terminal on a fresh line (before notes on stderr, and at exit)."""
        if self.line_open:
            self._write("\n")


def note(printer: Printer, text: str) -> None:
    printer.end_line()
    print(text, file=sys.stderr, flush=True)


def handle(printer: Printer, raw: str | bytes) -> bool:
    """Act on one server message; True when it says the daemon's audio source has ended."""
    try:
        msg = json.loads(raw)
    except ValueError:
        note(printer, f"ignoring a message that is not JSON: {raw[:80]!r}")
        return False
    if not isinstance(msg, dict):
        return False
    kind = msg.get("type")
    if kind == "hello":
        if msg.get("seq", 0) < printer.last_seq:
            note(printer, "the daemon restarted (its seq went back); printing its recent finals")
            printer.last_seq = -1
        for final in msg.get("finals", []):
            printer.final(final)
    elif kind == "final":
        printer.final(msg, raw if isinstance(raw, str) else None)
    elif kind == "partial":
        printer.partial(msg, raw if isinstance(raw, str) else json.dumps(msg))
    elif kind == "status":
        note(printer, f"[{msg.get('level', 'info')}] {msg.get('message', '')}")
        return msg.get("code") == "source_ended"
    elif kind == "error":
        note(printer, f"[error {msg.get('code', '')}] {msg.get('message', '')}")
    return False


async def stream(url: str, printer: Printer, until_source_ends: bool = False) -> None:
    """Print captions from the daemon, reconnecting with exponential backoff; forever, or until the daemon says
    its audio source ended (after that source's last final) when until_source_ends is set."""
    delay = BACKOFF_FIRST_S
    while True:
        try:
            async with connect(url, open_timeout=5) as ws:
                delay = BACKOFF_FIRST_S  # connected: the next outage starts the backoff afresh
                async for raw in ws:
                    if handle(printer, raw) and until_source_ends:
                        printer.end_line()
                        return
            reason = f"connection closed ({ws.close_code})"
        except ConnectionClosed as e:
            reason = f"connection lost ({e.rcvd.code if e.rcvd else 'no close frame'})"
        except (OSError, InvalidHandshake, TimeoutError) as e:
            reason = f"cannot connect to {url}: {e}"
        note(printer, f"{reason}; reconnecting in {delay:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)


async def follow(path: Path, printer: Printer) -> None:
    """Print the finals of a JSONL transcript, then new ones as they are appended (like tail -f)."""
    pos, pending, waiting_noted = 0, "", False
    while True:
        try:
            size = (await asyncio.to_thread(path.stat)).st_size  # file I/O off the loop (ruff ASYNC240)
        except FileNotFoundError:
            if not waiting_noted:
                note(printer, f"waiting for {path} to appear")
                waiting_noted = True
            size = None
        if size is not None and size < pos:  # truncated or replaced: start over
            note(printer, f"{path} was truncated; reading it again")
            pos, pending = 0, ""
        if size is not None and size > pos:
            chunk = await asyncio.to_thread(_read_from, path, pos)
            pos += len(chunk)
            *lines, pending = (pending + chunk.decode("utf-8", errors="replace")).split("\n")
            for line in lines:  # the last piece has no newline yet: it waits for the rest
                follow_line(printer, line)
        await asyncio.sleep(FOLLOW_POLL_S)


def _read_from(path: Path, pos: int) -> bytes:
    with path.open("rb") as f:
        f.seek(pos)
        return f.read()


def follow_line(printer: Printer, line: str) -> None:
    line = line.strip()
    if not line:
        return
    try:
        msg = json.loads(line)
    except ValueError:
        note(printer, f"skipping a line that is not JSON: {line[:80]!r}")
        return
    if isinstance(msg, dict):
        printer.show(msg, line)  # no seq check: a file may hold several daemon runs, each counting from 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"daemon websocket (default {DEFAULT_URL})")
    parser.add_argument("--partials", action="store_true", help="show partial captions too")
    parser.add_argument("--json", action="store_true", help="print the raw JSON of each message shown")
    parser.add_argument("--follow", type=Path, metavar="FILE.jsonl",
                        help="tail a transcript file written by the daemon instead of connecting")
    parser.add_argument("--until-source-ends", action="store_true",
                        help="exit once the daemon's audio source ends (e.g. serve --source FILE) and its last "
                             "final is shown")
    args = parser.parse_args(argv)

    printer = Printer(args.json, args.partials, sys.stdout.isatty())
    job = follow(args.follow, printer) if args.follow else stream(args.url, printer, args.until_source_ends)
    try:
        asyncio.run(job)
    except KeyboardInterrupt:
        printer.end_line()
    except InvalidURI as e:
        parser.error(str(e))
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
