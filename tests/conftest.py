"""Fixtures: tiny random checkpoints (two configs), their bundles, and the transformers reference objects; and
the `slow` marker on every test that needs the export toolchain (the `export` extra: torch, transformers, onnx,
coremltools), so that `pytest -m "not slow"` runs the runtime's tests without it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PRESETS = ("a", "b")
BUCKETS = "1000,3500"

TOOLCHAIN = ("torch", "transformers", "onnx", "coremltools")
HAS_TOOLCHAIN = all(importlib.util.find_spec(name) is not None for name in TOOLCHAIN)
# Test modules that import the toolchain as they are imported: all their tests are slow, and without the
# `export` extra they are not collected. Elsewhere, a test is slow when it uses one of TOOLCHAIN_FIXTURES or
# is marked itself.
TOOLCHAIN_MODULES = ("test_coreml_reference.py", "test_coreml_spec.py", "test_demo_model.py", "test_features.py",
                     "test_onnx_weights.py", "test_parity.py")
TOOLCHAIN_FIXTURES = {"tiny_checkpoints", "tiny_bundles", "hf_models", "hf_features"}
collect_ignore = [] if HAS_TOOLCHAIN else list(TOOLCHAIN_MODULES)


def pytest_report_header() -> str | None:
    if HAS_TOOLCHAIN:
        return None
    return f"export toolchain missing: not collected {', '.join(TOOLCHAIN_MODULES)}; run with -m 'not slow'"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in TOOLCHAIN_MODULES or TOOLCHAIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
