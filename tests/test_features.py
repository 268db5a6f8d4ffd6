"""Features in numpy vs transformers' CohereAsrFeatureExtractor (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daemon.model.features import FeatureParams, _power_spectrogram, log_mel, n_valid_frames, pad_frames
from devtools.speech import SR, speech_clip

TOL = 1e-4  # max |Δ| on valid frames, dither off on both sides


def params(fe, dither: float = 0.0) -> FeatureParams:
    window = torch.hann_window(fe.win_length, periodic=False).numpy()
    return FeatureParams(SR, fe.n_fft, fe.win_length, fe.hop_length, fe.feature_size, fe.preemphasis, dither,
                         2.0**-24, 1e-5, fe.mel_filters.numpy(), window)


def reference(fe, x: np.ndarray) -> np.ndarray:
    out = fe(x, sampling_rate=SR, return_tensors="np")
    n = int(out["attention_mask"][0].sum())
    return out["input_features"][0, :n].T  # (n_mels, n_valid)


CLIPS = {
    "speech_3s": lambda: speech_clip(3.0, 1),
    "speech_exactly_35s": lambda: speech_clip(35.0, 2),
    "clipped": lambda: np.clip(speech_clip(4.0, 3) * 40, -1, 1).astype(np.float32),
    "short_0.05s": lambda: speech_clip(0.05, 4),
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_matches_reference(name: str, hf_features) -> None:
    x = CLIPS[name]()
    ref = reference(hf_features, x)
    ours = log_mel(x, params(hf_features))
    assert ours.shape == ref.shape == (128, len(x) // 160)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("seed", range(6))
def test_random_lengths(seed: int, hf_features) -> None:
    rng = np.random.default_rng(seed)
    x = speech_clip(float(rng.uniform(0.03, 35.0)), 100 + seed)[: int(rng.integers(480, 560001))]
    ref = reference(hf_features, x)
    assert np.abs(log_mel(x, params(hf_features)) - ref).max() <= TOL


def test_exactly_35s_has_3500_valid_frames() -> None:
    assert n_valid_frames(560_000, 160) == 3500
    assert n_valid_frames(559_999, 160) == 3499


def test_digital_silence(hf_features) -> None:
    """Every bin is constant, so the exact normalised value is 0 on every valid frame.

    transformers computes CMVN in float32 and divides the rounding error of its mean by std + 1e-5 ≈ 1e-5,
    which shows up as values up to ~0.2 for some lengths; so the reference here is its own float32 log-mel
    normalised in float64 (the same formula without the cancellation).
    """
    for n in (16000, 12345, 560000):
        x = np.zeros(n, np.float32)
        ours = log_mel(x, params(hf_features))
        assert np.abs(ours).max() <= 1e-6
        logmel = hf_features._torch_extract_fbank_features(torch.zeros(1, n))[0, : n // 160].double().numpy()
        ref = ((logmel - logmel.mean(0)) / (logmel.std(0, ddof=1) + 1e-5)).T
        assert np.abs(ours - ref).max() <= TOL


def test_dither_on_matches_where_signal_dominates() -> None:
    """Dither 1e-5 on both sides (different noise streams): equal within 1e-3 where mel power ≫ dither floor.

    Dither enters |X|² through the cross term 2·Re(X·D*), so its effect scales with the amplitude ratio: a
    1e-3 agreement needs a power ratio above ~1e8, hence the loud noise bed under the speech here.
    """
    from transformers import CohereAsrFeatureExtractor

    fe = CohereAsrFeatureExtractor(dither=1e-5)
    rng = np.random.default_rng(7)
    x = (speech_clip(5.0, 7) + rng.normal(0, 0.3, 80000)).astype(np.float32)  # no cell near the floor
    p = params(fe)
    n = len(x) // 160

    def mel_power(y: np.ndarray) -> np.ndarray:
        pre = np.concatenate([[y[0]], y[1:] - 0.97 * y[:-1]])
        return (_power_spectrogram(pre, p) @ p.mel_filters.T.astype(np.float64))[:n].T

    strong = mel_power(x) > 1e8 * mel_power(rng.normal(0, 1e-5, len(x))).mean(1, keepdims=True)
    assert strong.mean() > 0.95, strong.mean()
    ours, ref = log_mel(x, params(fe, dither=1e-5)), reference(fe, x)
    assert np.abs(ours - ref)[strong].max() <= 1e-3
    assert not np.array_equal(ours, log_mel(x, params(fe, dither=0.0)))  # dither is really applied


def test_dither_magnitude_matches_on_silence() -> None:
    """On digital silence the features are the dither itself: same log-mel level as the reference's noise."""
    from transformers import CohereAsrFeatureExtractor

    fe = CohereAsrFeatureExtractor(dither=1e-5)
    p = params(fe, dither=1e-5)
    n = 32000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 1e-5
    pre = torch.cat([noise[:1], noise[1:] - 0.97 * noise[:-1]])
    ref_logmel = fe._torch_extract_fbank_features(pre[None])[0, : n // 160].double().numpy()
    ref_power = (np.exp(ref_logmel) - 2.0**-24).mean()
    from daemon.model.features import dither_noise

    d = dither_noise(n, 1e-5).astype(np.float64)
    ours_pre = np.concatenate([[d[0]], d[1:] - 0.97 * d[:-1]])
    ours_power = (_power_spectrogram(ours_pre, p) @ p.mel_filters.T.astype(np.float64))[: n // 160].mean()
    assert 0.95 < ours_power / ref_power < 1.05
    assert not np.array_equal(log_mel(np.zeros(n, np.float32), p), log_mel(np.zeros(n, np.float32), params(fe)))


def test_dither_is_seeded_by_length() -> None:
    from daemon.model.features import dither_noise

    assert np.array_equal(dither_noise(1000, 1e-5), dither_noise(1000, 1e-5))
    assert not np.array_equal(dither_noise(1000, 1e-5)[:999], dither_noise(999, 1e-5))


def test_too_short_is_an_error(hf_features) -> None:
    from daemon.errors import AudioError

    with pytest.raises(AudioError, match="too short"):
        log_mel(np.zeros(319, np.float32), params(hf_features))


def test_pad_frames() -> None:
    f = np.ones((128, 10), np.float32)
    p = pad_frames(f, 16)
    assert p.shape == (1, 128, 16) and p[0, :, :10].sum() == 1280 and not p[0, :, 10:].any()
