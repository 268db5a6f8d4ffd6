"""Soak of a running daemon: CPU share while it listens to silence, and its memory over a long fast file run.

    python -m bench.soak [--idle-seconds 60] [--noise-dbfs -50] [--mic] [--hours 1.0] [--sample-seconds 2]
        [--model models/demo] [--out bench/results/soak.json]

idle: `python -m daemon serve --source -` is fed, in 30 ms chunks paced in real time by this script (the way a
    microphone delivers it), with one websocket client connected, first digital silence (s16le zeros), then
    low room noise (Gaussian, --noise-dbfs RMS, int16: below the daemon's -45 dBFS energy gate, as a quiet
    room is), each in a daemon of its own. After the model has loaded (GET /health says "ok") and a short
    settling time, the daemon's CPU share of one core is Δ(utime + stime) of its process (all threads;
    /proc/PID/stat) ÷ wall time over --idle-seconds. Goal ≤ 1 % (issue 17) for both. With --mic, also
    `--source mic` (PortAudio) on a private PulseAudio server whose default input is a null sink's monitor
    playing zeros, then the noise (needs pulseaudio and pacat; the daemon's libpulse thread is counted).
soak: ≥ --hours of espeak-ng speech (the demo model's held-out sentences, cycled, with 1–2.5 s of silence
    between them) is written to a temporary int16 WAV and served with `--source FILE --fast --transcripts DIR`.
    Every --sample-seconds: VmRSS (/proc/PID/status), the finals so far and the stream position of the last one
    (from the transcript file, which sees every final), and /health's queue depth, audio lag and its response
    time. The run ends when the file source has ended (the daemon keeps serving and logs "source ended"; it
    waits at most 30 s for queued finals first, so with a backlog the log line comes early) and the queue
    stayed empty with no new final for one sample. In fast mode the VAD runs through the file far ahead of
    the decoder, so RSS holds the file and the queued segments' audio, and the websocket client is likely
    closed as too slow (4008) by the burst of speech_started/speech_stopped; both are recorded. Reported: RSS at model loaded, peak (sampled, and the
    kernel's VmHWM), end, and the slope in MB per audio hour over the second half of the audio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.accuracy import machine
from devtools.daemon_process import DEMO, Daemon, wer
from devtools.speech import espeak
from exporter.demo import grammar

ROOT = Path(__file__).resolve().parent.parent

SR = 16000
CHUNK_MS = 30  # stdin chunk, like the microphone's 30 ms blocks
IDLE_GOAL_PERCENT = 1.0
NOISE_DBFS = -50.0  # low room noise: 5 dB under the daemon's energy gate (VadOptions.min_level_dbfs, -45)
NOISE_LOOP_S = 10  # the noise is this long, then repeats
MIC_PLAYER_LATENCY_MS = 100  # --mic: the latency the player of the virtual microphone's sink asks PulseAudio for
SETTLE_S = 2.0  # after the model loaded: let the audio buffered while loading pass through
CLK_TCK = os.sysconf("SC_CLK_TCK")
KB_TO_MB = 1 / 1024  # /proc/PID/status reports kB


# ---------------------------------------------------------------- /proc readings of the daemon process
def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5), counted from `state`


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime per thread of the process, keyed "main" (the event loop) or "COMM/TID" (Python does not
    name its threads for the OS, so the TID tells them apart)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else f"{(task / 'comm').read_text().strip()}/{task.name}"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM) or a count (Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def children(pid: int) -> list[int]:
    """Child processes of every thread of pid (the daemon should have none: its time would not count)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def health(port: int, timeout: float) -> tuple[dict[str, Any] | None, float]:
    """GET /health and its response time in ms; None when it did not answer in time."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            doc = json.loads(r.read())
    except OSError:  # URLError and timeouts: the event loop was busy for longer than `timeout`
        doc = None
    return doc, round(1000 * (time.monotonic() - t0), 1)


def wait_loaded(d: Daemon, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {d.log()}")
        doc, _ = health(d.port, 5)
        if doc is not None and doc["status"] == "ok":
            return
        time.sleep(0.2)
    raise TimeoutError(f"model not loaded after {timeout} s: {d.log()}")


# ---------------------------------------------------------------- a websocket client beside the daemon
class Client(threading.Thread):
    """One websocket client, in its own thread: counts messages by type and keeps the close code."""

    def __init__(self, url: str) -> None:
        super().__init__(name="client", daemon=True)
        self.url = url
        self.counts: dict[str, int] = {}
        self.close_code: int | None = None
        self.close_reason = ""

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        try:
            async with connect(self.url, max_queue=None) as ws:
                try:
                    async for raw in ws:
                        t = json.loads(raw)["type"]
                        self.counts[t] = self.counts.get(t, 0) + 1
                finally:
                    self.close_code, self.close_reason = ws.close_code, ws.close_reason or ""
        except (ConnectionClosed, OSError):
            pass

    def summary(self) -> dict[str, Any]:
        return {"messages": dict(sorted(self.counts.items())), "close_code": self.close_code,
                "close_reason": self.close_reason}


# ---------------------------------------------------------------- idle: silence or room noise in real time
def idle_audio(noise_dbfs: float | None) -> bytes:
    """s16le audio to loop: one chunk of zeros (None), or NOISE_LOOP_S of Gaussian noise at noise_dbfs RMS."""
    if noise_dbfs is None:
        return bytes(2 * SR * CHUNK_MS // 1000)
    n = NOISE_LOOP_S * 1000 // CHUNK_MS * (SR * CHUNK_MS // 1000)  # whole chunks
    x = np.random.default_rng(0).standard_normal(n) * 10 ** (noise_dbfs / 20) * 32768
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def pace(stdin: Any, stop: threading.Event, audio: bytes) -> None:
    """Write `audio` (looped) to the daemon's stdin in 30 ms chunks on a real-time schedule."""
    n = 2 * SR * CHUNK_MS // 1000
    assert len(audio) % n == 0
    t0, i = time.monotonic(), 0
    try:
        while not stop.is_set():
            at = i * n % len(audio)
            stdin.write(audio[at : at + n])
            stdin.flush()
            i += 1
            stop.wait(max(0.0, t0 + i * CHUNK_MS / 1000 - time.monotonic()))
    except (BrokenPipeError, ValueError):  # the daemon stopped
        pass


def measure_idle(model: str, seconds: float, noise_dbfs: float | None = None) -> dict[str, Any]:
    """The daemon's CPU share of one core while it hears only digital silence (noise_dbfs None) or low noise."""
    stop = threading.Event()
    audio = idle_audio(noise_dbfs)
    with Daemon("--model", model, "--source", "-", stdin=subprocess.PIPE) as d:
        pacer = threading.Thread(target=pace, args=(d.proc.stdin, stop, audio), name="pacer", daemon=True)
        pacer.start()
        out = cpu_share(d, seconds)
        stop.set()
        pacer.join(5)
    heard = "zeros" if noise_dbfs is None else f"Gaussian noise at {noise_dbfs:g} dBFS RMS"
    return {"source": f"stdin s16le {SR} Hz {heard}, {CHUNK_MS} ms chunks paced in real time",
            "noise_dbfs": noise_dbfs, **out}


def measure_idle_mic(model: str, seconds: float, noise_dbfs: float | None = None) -> dict[str, Any]:
    """The same for `--source mic` (PortAudio) on a PulseAudio null sink's monitor that plays digital silence
    (or noise). The daemon's libpulse client thread counts too; how often it wakes is PulseAudio's choice (the
    sink runs at the latency its player asks for, MIC_PLAYER_LATENCY_MS here)."""
    with virtual_microphone(idle_audio(noise_dbfs)) as env, Daemon("--model", model, "--source", "mic", env=env) as d:
        out = cpu_share(d, seconds)
    heard = "zeros" if noise_dbfs is None else f"Gaussian noise at {noise_dbfs:g} dBFS RMS"
    return {"source": f"microphone (PortAudio → a PulseAudio null sink's monitor, {SR} Hz) playing {heard} with "
                      f"{MIC_PLAYER_LATENCY_MS} ms latency", "noise_dbfs": noise_dbfs, **out}


def cpu_share(d: Daemon, seconds: float) -> dict[str, Any]:
    """Once the model has loaded (and SETTLE_S more): the daemon's CPU share over `seconds`, by thread."""
    client = Client(d.url)
    client.start()
    wait_loaded(d)
    time.sleep(SETTLE_S)
    pid = d.proc.pid
    c0, th0, t0 = cpu_seconds(pid), thread_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, th1, t1 = cpu_seconds(pid), thread_cpu_seconds(pid), time.monotonic()
    per_thread = {n: round(100 * (v - th0.get(n, 0.0)) / (t1 - t0), 3) for n, v in th1.items()}
    doc, _ = health(d.port, 5)
    share = 100 * (c1 - c0) / (t1 - t0)
    return {"wall_seconds": round(t1 - t0, 3), "cpu_seconds": round(c1 - c0, 3),
            "cpu_percent_of_core": round(share, 3), "goal_percent": IDLE_GOAL_PERCENT,
            "meets_goal": share <= IDLE_GOAL_PERCENT, "rss_mb": round(status_kb(pid, "VmRSS") * KB_TO_MB, 1),
            "threads": status_kb(pid, "Threads"), "child_processes": len(children(pid)),
            "cpu_percent_by_thread": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
            "clients": doc["clients"] if doc else None, "audio_lag_s": doc["audio_lag_s"] if doc else None,
            "client": client.summary()}


@contextlib.contextmanager
def virtual_microphone(audio: bytes) -> Iterator[dict[str, str]]:
    """A private PulseAudio server whose default input is a null sink's monitor, fed `audio` (s16le, looped) in
    real time; yields the environment that points a process at it."""
    with tempfile.TemporaryDirectory(prefix="pulse-") as tmp:
        env = {"HOME": f"{tmp}/home", "XDG_RUNTIME_DIR": f"{tmp}/run"}
        for folder in env.values():
            Path(folder).mkdir(mode=0o700)
        conf = Path(tmp) / "pa.conf"
        conf.write_text("load-module module-native-protocol-unix auth-anonymous=1\n"
                        f"load-module module-null-sink sink_name=vsink rate={SR} channels=1 format=s16le\n"
                        "set-default-sink vsink\nset-default-source vsink.monitor\n")
        penv = {**os.environ, **env}
        pulse = subprocess.Popen(["pulseaudio", "-n", "-F", str(conf), "--daemonize=no", "--exit-idle-time=-1",
                                  "--disallow-exit", f"--log-target=file:{tmp}/pulse.log"], env=penv)
        player = None
        try:
            deadline = time.monotonic() + 20
            while subprocess.run(["pactl", "info"], env=penv, capture_output=True).returncode != 0:
                if time.monotonic() > deadline or pulse.poll() is not None:
                    raise RuntimeError("pulseaudio did not start")
                time.sleep(0.1)
            player = subprocess.Popen(["pacat", "--playback", "--device=vsink", "--raw", "--format=s16le",
                                       f"--rate={SR}", "--channels=1", f"--latency-msec={MIC_PLAYER_LATENCY_MS}"],
                                      stdin=subprocess.PIPE, env=penv)
            stop = threading.Event()
            threading.Thread(target=pace, args=(player.stdin, stop, audio), daemon=True).start()
            yield env
            stop.set()
        finally:
            if player is not None:
                player.kill()
                player.communicate()
            pulse.terminate()
            pulse.wait(10)


# ---------------------------------------------------------------- soak: a long file, fast
def write_program(path: Path, hours: float, seed: int = 0) -> dict[str, Any]:
    """Held-out sentences (espeak-ng, en-us) cycled with 1–2.5 s gaps until `hours` of int16 audio."""
    texts = grammar.demo_heldout("en")
    rng = np.random.default_rng(seed)
    cache: dict[int, np.ndarray] = {}
    n_target, n, spoken = int(hours * 3600 * SR), 0, []
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        while n < n_target:
            i = len(spoken) % len(texts)
            if i not in cache:
                cache[i] = np.clip(espeak(texts[i], "en-us", 150) * 0.8, -1, 1)
            gap = np.zeros(int(rng.uniform(1.0, 2.5) * SR), np.float32)
            f.write(np.concatenate([cache[i], gap]))
            n += len(cache[i]) + len(gap)
            spoken.append(texts[i])
    return {"audio_seconds": round(n / SR, 3), "sentences": len(spoken), "distinct_sentences": len(cache),
            "texts": spoken}


class TranscriptTail:
    """Finals appended by the daemon's TranscriptWriter (every final, whatever the websocket clients do)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.finals: list[dict[str, Any]] = []
        self._offset = 0

    def poll(self) -> None:
        files = sorted(self.folder.glob("transcript-*.jsonl"))
        if not files:
            return
        with files[0].open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for the next poll
        self._offset += len(complete)
        self.finals += [json.loads(line) for line in complete.decode().splitlines() if line.strip()]

    @property
    def position_s(self) -> float:
        return self.finals[-1]["end"] if self.finals else 0.0


def sample_once(d: Daemon, tail: TranscriptTail, t0: float, timeout: float) -> dict[str, Any]:
    pid = d.proc.pid
    rss = status_kb(pid, "VmRSS") * KB_TO_MB
    doc, ms = health(d.port, timeout)
    tail.poll()
    log = d.log()
    return {"t_s": round(time.monotonic() - t0, 2), "rss_mb": round(rss, 1),
            "audio_s": round(tail.position_s, 2), "finals": len(tail.finals),
            "queue_depth": doc["queue_depth"] if doc else None, "audio_lag_s": doc["audio_lag_s"] if doc else None,
            "health_ms": ms if doc else None, "loaded": "loaded and warmed up" in log,
            "source_ended": "source ended" in log}


def is_done(samples: list[dict[str, Any]]) -> bool:
    """The source ended and the queue was empty, with no new final, on the last two samples."""
    if len(samples) < 2:
        return False
    a, b = samples[-2:]
    return (a["source_ended"] and a["queue_depth"] == 0 and b["queue_depth"] == 0
            and a["finals"] == b["finals"])


def slope_mb_per_hour(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS against audio position over the second half of the audio."""
    end = max(s["audio_s"] for s in samples)
    xs = [(s["audio_s"] / 3600, s["rss_mb"]) for s in samples if s["loaded"] and s["audio_s"] >= end / 2]
    if len({x for x, _ in xs}) < 2:
        return None
    x, y = np.array(xs).T
    return float(np.polyfit(x, y, 1)[0])


def measure_soak(model: str, hours: float, every: float, timeout: float) -> dict[str, Any]:
    """The daemon's memory while it captions `hours` of audio as fast as it can."""
    with tempfile.TemporaryDirectory() as tmp:
        wav, tdir = Path(tmp) / "program.wav", Path(tmp) / "transcripts"
        program = write_program(wav, hours)
        print(f"soak: {program['audio_seconds'] / 3600:.2f} h of audio, {program['sentences']} sentences",
              file=sys.stderr)
        tail, samples = TranscriptTail(tdir), []
        with Daemon("--model", model, "--source", str(wav), "--fast", "--transcripts", str(tdir)) as d:
            client = Client(d.url)
            client.start()
            t0 = time.monotonic()
            while not is_done(samples) and d.proc.poll() is None and time.monotonic() - t0 < timeout:
                t_next = time.monotonic() + every
                samples.append(sample_once(d, tail, t0, min(every, 5.0)))
                time.sleep(max(0.0, t_next - time.monotonic()))
            completed = is_done(samples)
            wall = time.monotonic() - t0
            pid = d.proc.pid
            hwm, cpu = status_kb(pid, "VmHWM") * KB_TO_MB, cpu_seconds(pid)
    loaded = [s for s in samples if s["loaded"]] or samples
    slope = slope_mb_per_hour(samples)
    return {"source": "file (int16 WAV), --fast", "audio_seconds": program["audio_seconds"],
            "sentences": program["sentences"], "distinct_sentences": program["distinct_sentences"],
            "completed": completed, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "finals": len(tail.finals), "decoded_audio_seconds": round(tail.position_s, 2),
            "wer": round(wer(program["texts"], [f["text"] for f in tail.finals]), 4),
            "rss_mb": {"loaded": loaded[0]["rss_mb"], "peak": max(s["rss_mb"] for s in samples),
                       "end": samples[-1]["rss_mb"], "peak_vmhwm": round(hwm, 1)},
            "slope_mb_per_audio_hour_second_half": None if slope is None else round(slope, 2),
            "health_timeouts": sum(s["health_ms"] is None for s in samples),
            "client": client.summary(), "sample_seconds": every, "samples": samples}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--idle-seconds", type=float, default=60.0,
                    help="silence, then noise, to measure CPU over (0: skip)")
    ap.add_argument("--noise-dbfs", type=float, default=NOISE_DBFS, help="RMS level of the room noise")
    ap.add_argument("--mic", action="store_true",
                    help="also measure idle on --source mic (a private PulseAudio server's null-sink monitor)")
    ap.add_argument("--hours", type=float, default=1.0, help="audio for the memory run (0: skip)")
    ap.add_argument("--sample-seconds", type=float, default=2.0, help="RSS sampling interval")
    ap.add_argument("--timeout", type=float, default=None,
                    help="give up on the memory run after this many seconds (default: 3 × the audio + 5 min)")
    ap.add_argument("--model", default=str(DEMO), help="bundle folder (default: models/demo)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {"command": shlex.join(["python", "-m", "bench.soak", *sys.argv[1:]]),
                              "machine": machine(), "load_average": [round(x, 2) for x in os.getloadavg()],
                              "model": args.model}
    if args.idle_seconds > 0:
        result["idle"] = measure_idle(args.model, args.idle_seconds)
        print(f"idle, silence: {result['idle']['cpu_percent_of_core']:.2f} % of a core", file=sys.stderr)
        result["idle_noise"] = measure_idle(args.model, args.idle_seconds, args.noise_dbfs)
        print(f"idle, noise: {result['idle_noise']['cpu_percent_of_core']:.2f} % of a core", file=sys.stderr)
        if args.mic:
            result["idle_mic"] = measure_idle_mic(args.model, args.idle_seconds)
            result["idle_mic_noise"] = measure_idle_mic(args.model, args.idle_seconds, args.noise_dbfs)
            for key in ("idle_mic", "idle_mic_noise"):
                print(f"{key}: {result[key]['cpu_percent_of_core']:.2f} % of a core", file=sys.stderr)
    if args.hours > 0:
        timeout = args.timeout if args.timeout is not None else 3 * 3600 * args.hours + 300
        result["soak"] = measure_soak(args.model, args.hours, args.sample_seconds, timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {k: v for k, v in result.items() if k != "soak"}
    if "soak" in result:
        summary["soak"] = {k: v for k, v in result["soak"].items() if k != "samples"}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
