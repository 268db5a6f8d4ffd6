"""Audio files to 16 kHz mono float32 (soundfile + soxr), and splitting long audio like the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from .errors import AudioError


def to_mono_rate(data: npt.NDArray[np.floating], rate: int, target_rate: int) -> npt.NDArray[np.float32]:
    """Mix (n,) or (n, channels) audio down to mono and resample it to target_rate (soxr, high quality)."""
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != target_rate:
        x = soxr.resample(x, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_audio(path: str | Path, target_rate: int) -> npt.NDArray[np.float32]:
    """Read any file soundfile can decode, as mono float32 at target_rate.

    Raises:
        AudioError: when the file is missing, unreadable, or holds no samples.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return to_mono_rate(data, rate, target_rate)


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
        cut = _quietest_block(x, lo, hi, window_samples) if hi > lo else start + max_samples
        cut = max(start + 1, min(cut, n))
        spans.append((start, cut))
        start = cut
    return spans


def _quietest_block(x: npt.NDArray[np.float32], lo: int, hi: int, block: int) -> int:
    """Start of the lowest-RMS block of `block` samples in x[lo:hi] (blocks do not overlap; first wins)."""
    seg = x[lo:hi].astype(np.float64)
    if seg.shape[0] <= block:
        return (lo + hi) // 2
    starts = range(0, seg.shape[0] - block, block)
    rms = [np.sqrt(np.mean(seg[i : i + block] ** 2)) for i in starts]
    return lo + starts[int(np.argmin(rms))]
