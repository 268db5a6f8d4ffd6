"""Splitting long audio into windows the way the reference does: cut at the quietest block near each limit."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def split_windows(x: npt.NDArray[np.float32], max_samples: int, search_samples: int,
                  window_samples: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges of windows ≤ max_samples, cut at the quietest point like the reference.

    Audio of at most max_samples is one window. Otherwise each cut is at the start of the lowest-RMS
    window_samples block among the non-overlapping blocks of [start + max − search, start + max); windows
    do not overlap.
    """
    n = int(x.shape[0])
    if n <= max_samples:
        return [(0, n)]
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if start + max_samples >= n:
            spans.append((start, n))
            break
        lo, hi = max(start, start + max_samples - search_samples), min(start + max_samples, n)
        cut = quietest_block(x, lo, hi, window_samples) if hi > lo else start + max_samples
        cut = max(start + 1, min(cut, n))
        spans.append((start, cut))
        start = cut
    return spans


def quietest_block(x: npt.NDArray[np.float32], lo: int, hi: int, block: int) -> int:
    """Start of the lowest-RMS block of `block` samples in x[lo:hi] (blocks do not overlap; first wins)."""
    seg = x[lo:hi].astype(np.float64)
    if seg.shape[0] <= block:
        return (lo + hi) // 2
    starts = range(0, seg.shape[0] - block, block)
    rms = [np.sqrt(np.mean(seg[i : i + block] ** 2)) for i in starts]
    return lo + starts[int(np.argmin(rms))]
