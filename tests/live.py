"""Helpers for end-to-end tests: run `python -m daemon serve` as a subprocess and collect its messages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"


class Daemon:
    """`python -m daemon serve ARGS --port 0` in a subprocess; `port` is read from its log."""

    def __init__(self, *args: str, stdin: int | None = None, env: dict[str, str] | None = None,
                 port: int = 0) -> None:
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"daemon-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve", "--port", str(port), *args],
                                     cwd=ROOT, stdin=stdin, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on ws://[\d.]+:(\d+)", self.log_path.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(self.log_path.read_text())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: finish the open segment, close clients with 1001
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def collect(url: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float) -> list[dict[str, Any]]:
    """Messages from one client until done(messages) or the timeout."""
    out: list[dict[str, Any]] = []
    async with connect(url) as ws:
        deadline = time.monotonic() + timeout
        while not done(out) and time.monotonic() < deadline:
            try:
                out.append(json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic())))
            except TimeoutError:
                break
    return out


def wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer(" ".join(refs).lower(), " ".join(hyps).lower())
