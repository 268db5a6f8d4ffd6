"""The audio front end a FluidInference folder does not ship: the reference's parameters and its mel filterbank in numpy.

A bundle carries the filterbank the exporter took from transformers (mel_filters.npy); FluidInference's
published Core ML files come without one, and the daemon never imports transformers or librosa. So the
filterbank is computed here the way transformers' CohereAsrFeatureExtractor gets it: a Slaney-scale, Slaney-
normalised triangular filterbank of 128 filters over the 257 bins of a 512-point FFT at 16 kHz, 0–8000 Hz, in
float64 and then float32 (tests/test_fluidaudio.py checks it against transformers and against the demo
bundle's mel_filters.npy). The other parameters are the reference's (reference/model.md §5), dither included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.model.features import FeatureParams

# transformers CohereAsrFeatureExtractor / the Hub preprocessor_config.json (reference/model.md §5)
SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 128
F_MIN_HZ = 0.0
F_MAX_HZ = 8000.0
PREEMPHASIS = 0.97
DITHER = 1e-5  # applied at inference by the reference (FluidAudio leaves it out)
LOG_ZERO_GUARD = 2.0**-24
CMVN_EPS = 1e-5
MAX_WINDOW_SECONDS = 35.0
SPLIT_SEARCH_SECONDS = 5.0
SPLIT_WINDOW_SAMPLES = 1600
FILTERBANK = "slaney mel 0–8000 Hz computed in numpy (daemon.model.fluidaudio_features), as transformers'"

# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney mel of frequencies in Hz."""
    hz = np.asarray(hz, np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    out: npt.NDArray[np.float64] = np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)
    return out


def mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Frequencies in Hz of Slaney mels."""
    mel = np.asarray(mel, np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    out: npt.NDArray[np.float64] = np.where(mel >= _MIN_LOG_MEL, log_part, mel * _F_SP)
    return out


def slaney_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                       f_min: float = F_MIN_HZ, f_max: float = F_MAX_HZ) -> npt.NDArray[np.float32]:
    """Triangular mel filters, each scaled to unit area per Hz (Slaney norm: 2 / bandwidth).

    Returns:
        float32 (n_mels, n_fft // 2 + 1): the power spectrum (frames, bins) @ filters.T gives mel power.
    """
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)), n_mels + 2))
    widths = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - bins_hz[None, :]  # (n_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, bins)
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    out: npt.NDArray[np.float32] = filters.astype(np.float32)
    return out


def symmetric_hann(n: int = WIN_LENGTH) -> npt.NDArray[np.float32]:
    """torch.hann_window(n, periodic=False): 0.5 − 0.5·cos(2πk/(n−1))."""
    window: npt.NDArray[np.float32] = np.hanning(n).astype(np.float32)
    return window


def feature_params(n_mels: int = N_MELS) -> FeatureParams:
    """The reference's front end for FluidInference's files (their encoder takes n_mels × 3500 frames)."""
    return FeatureParams(sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
                         n_mels=n_mels, preemphasis=PREEMPHASIS, dither=DITHER, log_zero_guard=LOG_ZERO_GUARD,
                         cmvn_eps=CMVN_EPS, mel_filters=slaney_mel_filters(n_mels=n_mels),
                         window=symmetric_hann())


def audio_manifest(n_mels: int = N_MELS) -> dict[str, Any]:
    """The `audio` section a manifest would carry for these files (no filterbank files: computed here)."""
    return {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop_length": HOP_LENGTH,
            "n_mels": n_mels, "preemphasis": PREEMPHASIS, "dither": DITHER, "log_zero_guard": LOG_ZERO_GUARD,
            "cmvn_eps": CMVN_EPS, "mel_filters": None, "window": None, "filterbank": FILTERBANK,
            "max_window_seconds": MAX_WINDOW_SECONDS, "split_search_seconds": SPLIT_SEARCH_SECONDS,
            "split_window_samples": SPLIT_WINDOW_SAMPLES}
