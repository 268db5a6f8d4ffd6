"""How slow the Core ML reference evaluator is: the demo bundle's Core ML files (coreml-reference) vs its ONNX.

    python -m bench.coreml_speed [--repeats 3] [--out bench/results/coreml_speed.json]

Per clip length (5 s and 30 s of espeak speech, English, greedy, no punctuation): the median over repeats of the
wall time of one window (features, encoder, greedy decode), and its encoder and decoder parts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from daemon.model.decode import DecodeOptions
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip

ROOT = Path(__file__).resolve().parent.parent
SECONDS = (5.0, 30.0)


def time_window(tr, x, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        t: dict[str, float] = {}
        _, res = tr.transcribe_window(x, DecodeOptions(language="en", punctuation=False), timings=t)
        runs.append((sum(t.values()), t["encoder"], t["decoder"], res.n_steps))
    total, enc, dec, steps = (statistics.median(r[i] for r in runs) for i in range(4))
    return {"window_s": round(total, 3), "encoder_s": round(enc, 3), "decoder_s": round(dec, 3),
            "decoder_steps": int(steps), "ms_per_step": round(1000 * dec / steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.coreml_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "demo"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "coreml_speed.json")
    args = ap.parse_args()
    clips = {s: speech_clip(s, 7) for s in SECONDS}
    results = {}
    for backend in ("onnx", "coreml-reference"):
        tr = load_transcriber(args.model, backend, dither=0.0)
        results[backend] = {f"{s:g}s": time_window(tr, x, args.repeats) for s, x in clips.items()}
        print(backend, json.dumps(results[backend]), flush=True)
    doc = {"command": " ".join(["python -m bench.coreml_speed", *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared; other jobs ran)",
           "results": results}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
