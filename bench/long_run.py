"""Long run of the daemon (issue 16): ≥ 1 h of speech through the file source with partials on; does anything grow?

    python -m bench.long_run [--hours 1.0] [--speed 6] [--sample-seconds 3] [--partial-interval-ms 100]
        [--model models/demo] [--out bench/results/long_run.json]

The held-out sentences of the demo model (espeak-ng, cycled with 1–2.5 s of silence; bench.soak's program) are
written to a WAV and piped to `serve --source - --partial-interval-ms 100 --transcripts DIR` at --speed × real
time, one websocket client reading everything. Not `--source FILE --fast`: there the VAD passes a sentence in
milliseconds of wall time, so no partial is ever due (bench.soak measures that mode: no partials at all), and a
real-time file would take the hour itself. At 6× a 3 s sentence is open for 0.5 s: about five partials. Every --sample-seconds, from /proc/PID: VmRSS, open file descriptors, threads; from GET
/health: the final latency (median and p95 of the recent VAD-close → final times), queue depth, audio lag; from
the transcript file: finals so far and the audio position of the last one.

Figures (each against its goal): RSS growth = (RSS at the end of the audio − RSS once 10 % of the audio was
captioned) ÷ the latter (goal ≤ 5 %); fds and threads: their least value over the last quarter of the samples
minus that over the first quarter, from 10 % of the audio on (goal 0; the least, since /health's own connection comes and goes);
latency stable: the median final latency of the last quarter of the samples ÷ that of the second quarter
(goal ≤ 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import soundfile as sf

from bench.soak import KB_TO_MB, Client, TranscriptTail, health, status_kb, write_program
from devtools.daemon_process import DEMO, ROOT, Daemon, wer

GOALS = {"rss_growth_percent": 5.0, "fd_growth": 0, "thread_growth": 0, "latency_ratio": 1.5}


def process_sample(pid: int) -> dict[str, Any]:
    return {"rss_mb": round(status_kb(pid, "VmRSS") * KB_TO_MB, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": status_kb(pid, "Threads")}


def sample(d: Daemon, tail: TranscriptTail, t0: float) -> dict[str, Any]:
    doc, ms = health(d.port, 5.0)
    tail.poll()
    latency = (doc or {}).get("final_latency_ms") or {}
    return {"t_s": round(time.monotonic() - t0, 2), **process_sample(d.proc.pid), "audio_s": round(tail.position_s, 2),
            "finals": len(tail.finals), "latency_median_ms": latency.get("median"),
            "latency_p95_ms": latency.get("p95"), "queue_depth": (doc or {}).get("queue_depth"),
            "health_ms": ms if doc else None, "source_ended": "source ended" in d.log()}


def done(samples: list[dict[str, Any]], sentences: int) -> bool:
    return bool(samples) and samples[-1]["source_ended"] and samples[-1]["finals"] >= sentences


def _level(samples: list[dict[str, Any]], key: str, quarter: int) -> int:
    """The least value of `key` over the first (0) or last (-1) quarter of the samples: the steady level, not
    a descriptor or thread that exists only while a /health request is being answered."""
    q = max(1, len(samples) // 4)
    part = samples[:q] if quarter == 0 else samples[-q:]
    return min(int(x[key]) for x in part)


def figures(samples: list[dict[str, Any]], audio_s: float) -> dict[str, Any]:
    """The growth and stability figures of the docstring."""
    during = [s for s in samples if not s["source_ended"]] or samples
    base = next(s for s in during if s["audio_s"] >= 0.1 * audio_s) if during[-1]["audio_s"] >= 0.1 * audio_s \
        else during[0]
    end, steady = during[-1], during[during.index(base):]  # from 10 % of the audio: model loaded, warmed up
    lat = [s["latency_median_ms"] for s in during if s["latency_median_ms"] is not None]
    q = max(1, len(lat) // 4)
    second, last = sorted(lat[q : 2 * q]), sorted(lat[-q:])
    ratio = (last[len(last) // 2] / second[len(second) // 2]) if second and last and second[0] else None
    return {"rss_mb_at_10_percent": base["rss_mb"], "rss_mb_at_end": end["rss_mb"],
            "rss_growth_percent": round(100 * (end["rss_mb"] - base["rss_mb"]) / base["rss_mb"], 2),
            "fds_at_10_percent": base["fds"], "fd_growth": _level(steady, "fds", -1) - _level(steady, "fds", 0),
            "threads_at_10_percent": base["threads"],
            "thread_growth": _level(steady, "threads", -1) - _level(steady, "threads", 0),
            "latency_median_ms_second_quarter": second[len(second) // 2] if second else None,
            "latency_median_ms_last_quarter": last[len(last) // 2] if last else None,
            "latency_ratio": None if ratio is None else round(ratio, 3)}


def pipe(wav: Path, stdin: Any, speed: float, chunk_s: float = 0.1) -> None:
    """The WAV's int16 samples to the daemon's stdin at `speed` × real time, then EOF."""
    with sf.SoundFile(wav) as f:
        t0, n = time.monotonic(), 0
        for block in f.blocks(int(chunk_s * f.samplerate), dtype="int16"):
            stdin.write(block.astype("<i2").tobytes())
            stdin.flush()
            n += 1
            time.sleep(max(0.0, t0 + n * chunk_s / speed - time.monotonic()))
    stdin.close()


def run(model: str, hours: float, speed: float, every: float, partial_ms: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        wav, tdir = Path(tmp) / "program.wav", Path(tmp) / "transcripts"
        program = write_program(wav, hours)
        print(f"long run: {program['audio_seconds'] / 3600:.2f} h, {program['sentences']} sentences", file=sys.stderr)
        tail, samples = TranscriptTail(tdir), []
        with Daemon("--model", model, "--source", "-", "--partial-interval-ms", str(partial_ms),
                    "--transcripts", str(tdir), stdin=subprocess.PIPE, start_timeout=300) as d:
            client = Client(d.url)
            client.start()
            threading.Thread(target=pipe, args=(wav, d.proc.stdin, speed), daemon=True).start()
            t0 = time.monotonic()
            while not done(samples, program["sentences"]) and d.proc.poll() is None \
                    and time.monotonic() - t0 < timeout:
                t_next = time.monotonic() + every
                samples.append(sample(d, tail, t0))
                time.sleep(max(0.0, t_next - time.monotonic()))
            wall = time.monotonic() - t0
    f = figures(samples, program["audio_seconds"])
    verdict = {k: f[k] is not None and f[k] <= goal for k, goal in GOALS.items()}
    return {"source": f"stdin (s16le) at {speed:g}x real time", "partial_interval_ms": partial_ms,
            "audio_seconds": program["audio_seconds"], "sentences": program["sentences"],
            "completed": done(samples, program["sentences"]), "wall_seconds": round(wall, 1),
            "finals": len(tail.finals), "wer": round(wer(program["texts"], [x["text"] for x in tail.finals]), 4),
            "client": client.summary(), "figures": f, "goals": GOALS, "meets": verdict,
            "sample_seconds": every, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.long_run", description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--sample-seconds", type=float, default=3.0)
    ap.add_argument("--speed", type=float, default=6.0, help="audio seconds piped per wall second")
    ap.add_argument("--partial-interval-ms", type=int, default=100)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_run.json")
    args = ap.parse_args(argv)
    from bench.soak import machine

    result = {"command": shlex.join(["python", "-m", "bench.long_run", *sys.argv[1:]]), "machine": machine(),
              "load_average": [round(x, 2) for x in os.getloadavg()], "model": args.model,
              **run(args.model, args.hours, args.speed, args.sample_seconds, args.partial_interval_ms,
                    3 * 3600 * args.hours / args.speed + 300)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
