"""Caption latency of a running daemon, measured by a websocket client (real-time file source, demo model).

    python -m bench.live_latency [--sentences 12] [--model models/demo] [--out bench/results/live_latency.json]

For each segment: VAD close → final (arrival of `final` − arrival of `speech_stopped`), end of speech → final
(adds the end-of-speech silence the VAD waits for; the speech end is known from how the audio was built), and
the partial cadence (time between consecutive partials of a segment). The JSON holds the median and p95 of
each and, under "samples", every value (ms) they were taken from.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

from devtools.daemon_process import DEMO, Daemon, wer
from devtools.speech import espeak
from exporter.demo import grammar

ROOT = Path(__file__).resolve().parent.parent

SR = 16000


def build(n: int, gap_s: float = 1.5) -> tuple[np.ndarray, list[str], list[float]]:
    texts = grammar.demo_heldout("en")[:n]
    gap = np.zeros(int(gap_s * SR), np.float32)
    parts, ends, t = [gap], [], gap_s
    for text in texts:
        x = espeak(text, "en-us", 150) * 0.8
        voiced_end = int(np.nonzero(np.abs(x) > 0.01)[0][-1]) + 1  # espeak-ng pads its own silence
        parts += [x, gap]
        ends.append(t + voiced_end / SR)
        t += len(x) / SR + gap_s
    return np.concatenate(parts), texts, ends


async def listen(url: str, n_finals: int, seconds: float) -> list[tuple[float, dict]]:
    """(arrival time, message) until n_finals finals came; TimeoutError after `seconds`."""
    out: list[tuple[float, dict]] = []
    async with connect(url) as ws, asyncio.timeout(seconds):
        while sum(m["type"] == "final" for _, m in out) < n_finals:
            raw = await ws.recv()
            out.append((time.monotonic(), json.loads(raw)))  # the time of arrival, taken after recv
    return out


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live_latency.json")
    args = ap.parse_args()
    audio, texts, ends = build(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "program.wav"
        sf.write(wav, audio, SR)
        with Daemon("--model", args.model, "--source", str(wav)) as d:
            msgs = asyncio.run(listen(d.url, len(texts), len(audio) / SR + 60))
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{d.port}/health", timeout=10).read())
    stopped = {m["segment"]: (t, m) for t, m in msgs if m["type"] == "speech_stopped"}
    finals = [(t, m) for t, m in msgs if m["type"] == "final"]
    vad_to_final = [t - stopped[m["segment"]][0] for t, m in finals]
    # end of speech → final: the VAD closed at stream time `end`; speech ended earlier by (end − speech_end).
    speech_to_final = [lat + (stopped[m["segment"]][1]["end"] - min(ends, key=lambda e: abs(e - m["end"])))
                       for lat, (_, m) in zip(vad_to_final, finals, strict=True)]
    cadence = []
    for seg in stopped:
        ts = [t for t, m in msgs if m["type"] == "partial" and m["segment"] == seg]
        cadence += [b - a for a, b in itertools.pairwise(ts)]
    result = {
        "command": f"python -m bench.live_latency --sentences {args.sentences}",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "model": args.model, "sentences": len(texts), "finals": len(finals),
        "wer": round(wer(texts, [m["text"] for _, m in finals]), 4),
        "vad_close_to_final_ms": {"median": round(1000 * statistics.median(vad_to_final), 1),
                                  "p95": round(1000 * pct(vad_to_final, 0.95), 1)},
        "end_of_speech_to_final_ms": {"median": round(1000 * statistics.median(speech_to_final), 1),
                                      "p95": round(1000 * pct(speech_to_final, 0.95), 1)},
        "daemon_vad_close_to_final_ms": health["final_latency_ms"],  # inside the daemon, no websocket
        "partial_interval_ms": {"median": round(1000 * statistics.median(cadence), 1) if cadence else None,
                                "p95": round(1000 * pct(cadence, 0.95), 1) if cadence else None,
                                "n": len(cadence)},
        # the raw per-segment values behind the summaries above, for the distribution plot of bench/report.py
        "samples": {"vad_close_to_final_ms": [round(1000 * x, 1) for x in vad_to_final],
                    "end_of_speech_to_final_ms": [round(1000 * x, 1) for x in speech_to_final],
                    "partial_interval_ms": [round(1000 * x, 1) for x in cadence]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
