"""This machine's memory bandwidth, measured from numpy: a large copy (and a large read) per thread count.

    python -m bench.bandwidth [--mb 1024] [--repeats 5]

A decoder step at the full shape reads every weight once per token, so its floor is weight bytes ÷ bandwidth
(bench/decoder_step.py reports the ratio). np.copyto of arrays far larger than the caches streams from and to
DRAM; numpy releases the GIL while it copies, so two threads copying halves measure what both cores together
get. Copy bandwidth counts the bytes copied (each byte is read once and written once, so the bus moves twice
that); read bandwidth counts the bytes a reduction reads (np.bitwise_or.reduce over uint64: no float math to
limit it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _split(a: np.ndarray, n: int) -> list[np.ndarray]:
    return np.array_split(a, n)


def copy_gbps(mb: int = 1024, threads: int = 1, repeats: int = 5) -> float:
    """Bytes copied per second (GB/s, 1e9) by np.copyto of an `mb` MB array, split over `threads` threads."""
    src = np.ones(mb * 2**20 // 8, np.uint64)
    dst = np.empty_like(src)
    parts = list(zip(_split(dst, threads), _split(src, threads), strict=True))
    with ThreadPoolExecutor(threads) as pool:
        seconds = _best(lambda: list(pool.map(lambda p: np.copyto(*p), parts)), repeats)
    return src.nbytes / seconds / 1e9


def read_gbps(mb: int = 1024, threads: int = 1, repeats: int = 5) -> float:
    """Bytes read per second (GB/s) by a bitwise-or reduction of an `mb` MB array over `threads` threads."""
    src = np.ones(mb * 2**20 // 8, np.uint64)
    parts = _split(src, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = _best(lambda: list(pool.map(np.bitwise_or.reduce, parts)), repeats)
    return src.nbytes / seconds / 1e9


def measure(mb: int = 1024, repeats: int = 5) -> dict[str, object]:
    """Copy and read bandwidth for 1 thread and for every core; `best_copy_gbps`: the highest copy rate."""
    counts = sorted({1, os.cpu_count() or 1})
    copy = {n: round(copy_gbps(mb, n, repeats), 2) for n in counts}
    read = {n: round(read_gbps(mb, n, repeats), 2) for n in counts}
    return {"array_mb": mb, "repeats": repeats, "copy_gbps_by_threads": copy, "read_gbps_by_threads": read,
            "best_copy_gbps": max(copy.values()), "best_read_gbps": max(read.values())}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bandwidth", description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(measure(args.mb, args.repeats), indent=2))


if __name__ == "__main__":
    main()
