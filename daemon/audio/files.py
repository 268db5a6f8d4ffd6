"""Audio files to mono float32 at the model's rate (soundfile + soxr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from daemon.errors import AudioError


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
