"""Audio files to mono float32 at the model's rate (soundfile + soxr), checked before a sample is decoded.

A file is opened with `open_audio`, which rejects what cannot be audio the model should hear: a rate outside
MIN_RATE..MAX_RATE (a header claiming 1 Hz would make the resampler allocate gigabytes), no samples, and a
WAV/AIFF whose header promises more data than the file holds (a truncated copy). `iter_audio` then reads it in
blocks, so a multi-hour file never needs its source rate and channels in memory at once. Non-finite samples
(NaN, ±Inf in a float file) are an error for `load_audio` (the `transcribe` command: the text would be invented
from garbage); the live file source cleans them to silence with a warning instead and keeps serving.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from daemon.errors import AudioError

MIN_RATE = 8_000  # Hz: telephone audio; anything lower is not speech the model can hear
MAX_RATE = 384_000  # Hz: the highest rate audio interfaces record at
BLOCK_S = 10  # seconds of the source read at a time
# libsndfile's log says "data : CLAIMED (should be PRESENT)" when a chunk is shorter than its header says. A
# writer that streamed to a pipe leaves 0 or 0xFFFFFFFF there (it could not seek back): not a truncation.
_SHORT_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMED_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclass(frozen=True)
class AudioInfo:
    """What a checked audio file holds: its path, rate (Hz), channels and length in frames."""

    path: Path
    rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def check_rate(rate: int, what: str) -> None:
    """Raise AudioError unless MIN_RATE ≤ rate ≤ MAX_RATE."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what}: sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz (a damaged header?)")


def open_audio(path: str | Path) -> AudioInfo:
    """Check that a file is audio the model can hear, without decoding its samples.

    Raises:
        AudioError: missing, unreadable, an absurd sample rate, no samples, or truncated.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(str(p)) as f:
            info = AudioInfo(p, int(f.samplerate), int(f.channels), int(f.frames))
            log = f.extra_info
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from e
    check_rate(info.rate, str(path))
    if info.frames == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    m = _SHORT_CHUNK.search(log)
    if m is not None and int(m.group(1)) not in _STREAMED_SIZES and int(m.group(1)) > int(m.group(2)):
        raise AudioError(f"{path}: the file is truncated: its header promises {m.group(1)} bytes of audio, "
                         f"it holds {m.group(2)}")
    return info


def iter_audio(info: AudioInfo, target_rate: int) -> Iterator[npt.NDArray[np.float32]]:
    """The file as mono float32 blocks at target_rate (≈ BLOCK_S each), resampled as one stream.

    Raises:
        AudioError: when the file cannot be decoded part way (a damaged or truncated compressed file).
    """
    stream = soxr.ResampleStream(info.rate, target_rate, 1, dtype="float32", quality="HQ") \
        if info.rate != target_rate else None
    try:
        with sf.SoundFile(str(info.path)) as f:
            for block in f.blocks(BLOCK_S * info.rate, dtype="float32", always_2d=True):
                mono = block.mean(axis=1, dtype=np.float32)
                yield stream.resample_chunk(mono) if stream is not None else mono
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{info.path}: cannot decode the audio ({e})") from e


def nonfinite(x: npt.NDArray[np.float32]) -> int:
    """How many samples are NaN or infinite."""
    return int(x.size - np.count_nonzero(np.isfinite(x)))


def load_audio(path: str | Path, target_rate: int) -> npt.NDArray[np.float32]:
    """Read any file soundfile can decode, as mono float32 at target_rate.

    Raises:
        AudioError: when the file is missing, unreadable, has an absurd rate, holds no samples, is truncated,
            or holds NaN or infinite samples.
    """
    info = open_audio(path)
    blocks, done = [], 0
    for block in iter_audio(info, target_rate):
        if nonfinite(block) > 0:
            first = done + int(np.argmin(np.isfinite(block)))
            raise AudioError(f"{path}: NaN or infinite samples from {first / target_rate:.2f} s on "
                             "(a damaged float file)")
        blocks.append(block)
        done += len(block)
    return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)
