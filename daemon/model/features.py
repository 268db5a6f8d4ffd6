"""Log-mel features in numpy, matching transformers' CohereAsrFeatureExtractor (NeMo FilterbankFeatures).

Order (per window): dither → preemphasis → centred zero-padded STFT → power → mel (the bundle's filterbank)
→ log with an additive guard → per-feature CMVN over valid frames (ddof=1) → padded frames set to 0.
Written by hand because it is small and must follow the reference step by step; tests check it against
transformers to 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.errors import AudioError


@dataclass(frozen=True)
class FeatureParams:
    """Audio front-end parameters, read from the bundle manifest's `audio` section."""

    sample_rate: int  # Hz
    n_fft: int  # FFT size in samples
    win_length: int  # analysis window in samples (centred inside n_fft)
    hop_length: int  # samples between frames
    n_mels: int  # mel bins
    preemphasis: float  # y[t] = x[t] - preemphasis * x[t-1]
    dither: float  # std of the Gaussian noise added to the valid samples (0 = off)
    log_zero_guard: float  # added to the mel power before the natural log
    cmvn_eps: float  # added to the std in per-feature normalisation
    mel_filters: npt.NDArray[np.float32]  # (n_mels, n_fft // 2 + 1)
    window: npt.NDArray[np.float32]  # (win_length,)

    def __post_init__(self) -> None:
        if self.mel_filters.shape != (self.n_mels, self.n_fft // 2 + 1):
            raise ValueError(f"mel filterbank shape {self.mel_filters.shape} != ({self.n_mels}, {self.n_fft // 2 + 1})")
        if self.window.shape != (self.win_length,):
            raise ValueError(f"window shape {self.window.shape} != ({self.win_length},)")


def n_valid_frames(n_samples: int, hop_length: int) -> int:
    """Frames that carry audio: (n + 2·(n_fft/2) − n_fft) // hop = n // hop, as the reference counts them."""
    return n_samples // hop_length


def dither_noise(n_samples: int, scale: float) -> npt.NDArray[np.float32]:
    """Gaussian noise seeded by the valid sample count, like the reference (numpy's stream, not torch's)."""
    return (scale * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)


def log_mel(samples: npt.NDArray[np.float32], params: FeatureParams) -> npt.NDArray[np.float32]:
    """Normalised log-mel features of one window of audio.

    Args:
        samples: float32 (n_samples,) mono audio at `params.sample_rate`, at least 2 hops long.

    Returns:
        float32 (n_mels, n_valid) with n_valid = n_samples // hop_length, CMVN-normalised per mel bin.

    Raises:
        AudioError: if the audio is too short for the ddof=1 normalisation (fewer than 2 valid frames).
    """
    n_samples = int(samples.shape[0])
    n_valid = n_valid_frames(n_samples, params.hop_length)
    if n_valid < 2:
        raise AudioError(
            f"audio of {n_samples} samples is too short: at least {2 * params.hop_length} samples "
            f"({2 * params.hop_length / params.sample_rate * 1000:.0f} ms) are needed"
        )
    # Dither and preemphasis in float32 like the reference: preemphasis cancels most of the low-frequency
    # energy, so its float32 rounding is visible in the lowest mel bins of quiet audio.
    x = samples.astype(np.float32)
    if params.dither > 0:
        x = x + dither_noise(n_samples, params.dither)
    x[1:] = x[1:] - np.float32(params.preemphasis) * x[:-1]
    power = _power_spectrogram(x.astype(np.float64), params)  # (n_frames, n_fft//2+1)
    mel = power @ params.mel_filters.astype(np.float64).T  # (n_frames, n_mels)
    logmel = np.log(mel[:n_valid] + params.log_zero_guard)
    return _cmvn(logmel, params.cmvn_eps).T.astype(np.float32)


def _power_spectrogram(x: npt.NDArray[np.float64], params: FeatureParams) -> npt.NDArray[np.float64]:
    """|STFT|² with a centred, zero-padded (not reflected) signal and the window centred in n_fft."""
    half = params.n_fft // 2
    padded = np.pad(x, (half, half))
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft)[:: params.hop_length]
    lpad = (params.n_fft - params.win_length) // 2
    window = np.zeros(params.n_fft)
    window[lpad : lpad + params.win_length] = params.window
    spec = np.fft.rfft(frames * window, axis=-1)
    return spec.real**2 + spec.imag**2


def _cmvn(logmel: npt.NDArray[np.float64], eps: float) -> npt.NDArray[np.float64]:
    """Per-feature mean/variance normalisation over frames (axis 0), variance with ddof=1."""
    mean = logmel.mean(axis=0)
    std = logmel.std(axis=0, ddof=1)
    normalised: npt.NDArray[np.float64] = (logmel - mean) / (std + eps)
    return normalised


def pad_frames(features: npt.NDArray[np.float32], n_frames: int) -> npt.NDArray[np.float32]:
    """Right-pad (n_mels, n_valid) features with 0.0 (the per-bin mean after CMVN) to (1, n_mels, n_frames)."""
    n_mels, n_valid = features.shape
    if n_valid > n_frames:
        raise ValueError(f"{n_valid} frames do not fit a window of {n_frames}")
    out = np.zeros((1, n_mels, n_frames), np.float32)
    out[0, :, :n_valid] = features
    return out
