"""Subprocesses for the benchmarks: one-shot commands measured with os.wait4 (wall time, exit status, peak RSS
of that child alone), persistent JSON-line workers, and a memory guard that kills our own children before the
kernel's OOM killer picks a victim."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def meminfo_mb(field: str) -> float:
    """A /proc/meminfo field in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(cmd: list[str], log: Path, timeout_s: float | None = None) -> dict[str, Any]:
    """Run a command (cwd = repo root), output to `log`; its wall time, exit status and peak RSS (os.wait4).
    The memory guard kills it if the machine runs short (see MemoryGuard)."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = _wait4(p, timeout_s)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    res = {"command": shlex.join(cmd), "rc": os.waitstatus_to_exitcode(status),
           "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024),
           "log_tail": tail}
    if GUARD.tripped_by(p.pid):
        res["killed"] = GUARD.tripped_by(p.pid)
    return res


def _wait4(p: subprocess.Popen, timeout_s: float | None) -> tuple[int, int, Any]:
    """os.wait4 (rusage of this child alone), polling so the timeout and the memory guard can act."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    GUARD.watch(p)
    try:
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return pid, status, ru
            if deadline is not None and time.monotonic() > deadline:
                GUARD.kill(p, f"ran past {timeout_s:.0f} s")
                deadline = None
            time.sleep(0.2)
    finally:
        GUARD.unwatch(p)


class MemoryGuard:
    """Kills our subprocesses when MemAvailable falls below a floor, before the kernel's OOM killer picks a
    victim (possibly someone else's process). A thread polls /proc/meminfo every 50 ms."""

    def __init__(self, floor_mb: float = 1500.0) -> None:
        self.floor_mb = floor_mb
        self._live: dict[int, subprocess.Popen] = {}
        self._why: dict[int, str] = {}
        self._thread: Any = None

    def watch(self, p: subprocess.Popen) -> None:
        import threading

        self._live[p.pid] = p
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def unwatch(self, p: subprocess.Popen) -> None:
        self._live.pop(p.pid, None)

    def kill(self, p: subprocess.Popen, why: str) -> None:
        self._why.setdefault(p.pid, why)
        p.kill()

    def tripped_by(self, pid: int) -> str | None:
        return self._why.get(pid)

    def _run(self) -> None:
        while True:
            avail = meminfo_mb("MemAvailable")
            if avail < self.floor_mb:
                for p in list(self._live.values()):
                    rss = _proc_rss_mb(p.pid)
                    self.kill(p, f"killed by the memory guard: MemAvailable {avail:.0f} MB < {self.floor_mb:.0f} MB "
                                 f"with this process at {rss} MB RSS")
            time.sleep(0.05)


def _proc_rss_mb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


GUARD = MemoryGuard()


class WorkerError(RuntimeError):
    """A worker subprocess failed or died."""


class Worker:
    """A persistent subprocess (`python -m MODULE --phase PHASE ARGS`, whose side runs `serve`): JSON commands
    in, JSON lines out."""

    def __init__(self, module: str, phase: str, args: list[str], log: Path) -> None:
        self.phase = phase
        self._log = log.open("w")
        self.p = subprocess.Popen([sys.executable, "-m", module, "--phase", phase, *args], cwd=ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        GUARD.watch(self.p)

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.p.stdin.flush()
        for line in self.p.stdout:
            if line.startswith("@@ "):
                res = json.loads(line[3:])
                if "error" in res:
                    raise WorkerError(f"{self.phase} {cmd}: {res['error']}")
                return res
        why = GUARD.tripped_by(self.p.pid) or f"see {self._log.name}"
        raise WorkerError(f"the {self.phase} worker died during {cmd!r} ({why})")

    def close(self) -> dict[str, Any]:
        """End the worker; its exit status and peak RSS over its whole life."""
        assert self.p.stdin
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        _, status, ru = _wait4(self.p, 120)
        self._log.close()
        res = {"rc": os.waitstatus_to_exitcode(status), "peak_rss_mb": round(ru.ru_maxrss / 1024)}
        if GUARD.tripped_by(self.p.pid):
            res["killed"] = GUARD.tripped_by(self.p.pid)
        return res


def serve(handler: Any) -> None:
    """Worker side: run the handler's methods named by each stdin line; library prints go to stderr."""
    out, sys.stdout = sys.stdout, sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        try:
            res = getattr(handler, req.pop("cmd"))(**req)
        except Exception as e:  # reported to the orchestrator, which records it
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {e}"}
        res.update(rss_mb=_rss_mb("VmRSS"), peak_rss_mb=_rss_mb("VmHWM"))
        out.write("@@ " + json.dumps(res) + "\n")
        out.flush()


def _rss_mb(field: str) -> int:
    return _proc_rss_mb(os.getpid(), field)

