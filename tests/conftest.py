"""Fixtures: tiny random checkpoints (two configs), their bundles, and the transformers reference objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PRESETS = ("a", "b")
BUCKETS = "1000,3500"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from exporter.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {p: build_tiny(root / p, seed=13, preset=p) for p in PRESETS}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny checkpoint exported through the real CLI: ONNX (buckets 1000 and 3500) and Core ML hybrid."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for p, ckpt in tiny_checkpoints.items():
        subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(root / p),
                        "--buckets", BUCKETS, "--backends", "onnx,coreml"], check=True, capture_output=True)
        out[p] = root / p
    return out


@pytest.fixture(scope="session")
def hf_models(tiny_checkpoints: dict[str, Path]) -> dict[str, object]:
    from transformers import CohereAsrForConditionalGeneration

    return {p: CohereAsrForConditionalGeneration.from_pretrained(d).eval() for p, d in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def hf_features():
    from transformers import CohereAsrFeatureExtractor

    return CohereAsrFeatureExtractor(dither=0.0)
