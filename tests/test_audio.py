"""Audio loading (any rate, mono mixdown) and splitting long audio like the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon.audio.files import load_audio
from daemon.audio.windows import split_windows
from daemon.errors import AudioError

SR = 16000


@pytest.mark.parametrize("seconds", [36.0, 71.3, 106.0])
def test_split_matches_reference(seconds: float, hf_features) -> None:  # slow: hf_features needs transformers
    import torch

    rng = np.random.default_rng(int(seconds))
    n = int(seconds * SR)
    x = (rng.normal(0, 0.1, n) * (1.2 + np.sin(np.arange(n) / 3000.0))).astype(np.float32)
    ref = hf_features._split_audio_chunks_energy(torch.from_numpy(x))
    ours = split_windows(x, 35 * SR, 5 * SR, 1600)
    assert [e - s for s, e in ours] == [len(c) for c in ref]
    assert all(np.array_equal(x[s:e], c.numpy()) for (s, e), c in zip(ours, ref, strict=True))
    assert ours[0][0] == 0 and ours[-1][1] == n and all(e - s <= 35 * SR for s, e in ours)


def test_short_audio_is_one_window() -> None:
    assert split_windows(np.zeros(35 * SR, np.float32), 35 * SR, 5 * SR, 1600) == [(0, 35 * SR)]


def test_any_rate_and_stereo(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t) * 0.5
    p = tmp_path / "stereo.flac"
    sf.write(p, np.stack([left, right], 1).astype(np.float32), 44100)
    x = load_audio(p, SR)
    assert x.dtype == np.float32 and abs(len(x) - SR) <= 1
    assert abs(np.sqrt(np.mean(x[1000:-1000] ** 2)) - 0.75 / np.sqrt(2)) < 0.01  # mean of the channels


@pytest.mark.parametrize("content,match", [(None, "no such audio file"), (b"garbage", "cannot read audio")])
def test_bad_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(AudioError, match=match):
        load_audio(p, SR)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(p, SR)
