"""The exporter's defaults follow the model: cache, token budget and buckets (exporter/options.py).

The option arithmetic is checked without torch; one slow test exports a tiny checkpoint whose decoder has
only 128 positions (with 05addee's fixed defaults that failed twice: cache 266 > 128, then 256 tokens).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.model.bundle import window_frames
from daemon.model.decode import DecodeOptions
from exporter.options import DEFAULT_CACHE_CAPACITY, PROMPT_LENGTH, ExportOptions

WINDOW = 3500  # 35 s at 16 kHz, hop 160


def test_prompt_length_is_the_templates() -> None:
    from exporter.manifest import PROMPT_TEMPLATE

    assert PROMPT_LENGTH == len(PROMPT_TEMPLATE) == 10


def test_window_frames_from_the_audio_parameters() -> None:
    assert window_frames(35.0, 16000, 160) == WINDOW
    assert window_frames(30.0, 16000, 160) == 3000


def test_defaults_for_the_real_model() -> None:
    plan = ExportOptions().for_model(positions=1024, window_frames=WINDOW)
    assert (plan.cache_capacity, plan.max_new_tokens, plan.buckets) == (DEFAULT_CACHE_CAPACITY, 256, (WINDOW,))
    assert plan.note is not None and "cache capacity 266" in plan.note and "256 new tokens" in plan.note


def test_defaults_follow_a_short_decoder() -> None:
    plan = ExportOptions().for_model(positions=128, window_frames=WINDOW)
    assert (plan.cache_capacity, plan.max_new_tokens) == (128, 128 - PROMPT_LENGTH)
    assert plan.note is not None and "128 positions" in plan.note and "118 new tokens" in plan.note


def test_given_values_are_kept_and_not_announced() -> None:
    plan = ExportOptions(buckets=(1000, WINDOW), cache_capacity=100, max_new_tokens=50).for_model(128, WINDOW)
    assert (plan.buckets, plan.cache_capacity, plan.max_new_tokens, plan.note) == ((1000, WINDOW), 100, 50, None)


@pytest.mark.parametrize("opts,positions,words", [
    (ExportOptions(cache_capacity=300), 128, ["cache capacity 300", "128 positions"]),
    (ExportOptions(max_new_tokens=256), 128, ["max_new_tokens 256", "cache of 128", "at most 118"]),
    (ExportOptions(), PROMPT_LENGTH, ["max_new_tokens 0"]),
    (ExportOptions(buckets=(500, 1000)), 512, ["full window of 3500 frames", "got 1000"]),
    (ExportOptions(buckets=(1000, 4000)), 512, ["full window of 3500 frames", "got 4000"]),
])
def test_what_does_not_fit_the_model_is_one_line(opts: ExportOptions, positions: int, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        opts.for_model(positions, WINDOW)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_given_values_are_checked_before_the_model_loads() -> None:
    with pytest.raises(ValueError, match="does not fit a cache of 266"):
        ExportOptions(cache_capacity=266, max_new_tokens=257)
    with pytest.raises(ValueError, match="at least 1"):
        ExportOptions(max_new_tokens=0)


@pytest.mark.slow
def test_export_of_a_128_position_decoder_uses_what_the_cache_leaves(tmp_path: Path) -> None:
    from daemon.model.transcriber import load_transcriber
    from exporter.tiny import build_tiny

    ckpt = build_tiny(tmp_path / "ckpt", preset="a", max_positions=128)
    out = tmp_path / "bundle"
    r = subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(out),
                        "--backends", "onnx"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if "cache capacity" in ln]
    assert said == ["[export] cache capacity 128 (the decoder's 128 positions), 118 new tokens per window "
                    "(capacity − the 10-token prompt)"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["decoder"]["cache_capacity"] == 128 and m["generation"]["max_new_tokens"] == 118
    assert m["encoder"]["buckets"] == [WINDOW] and m["audio"]["max_window_seconds"] == 35.0

    tr = load_transcriber(out, "onnx", dither=0.0)
    x = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    _, res = tr.transcribe_window(x, DecodeOptions(ignore_eos=True))  # the default budget fills the cache
    assert len(res.tokens) == 118 and res.n_steps == 1 + 118 - 1  # the prompt prefill, then 117 steps

    bad = subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"),
                          "--backends", "onnx", "--buckets", "500,1000"], capture_output=True, text=True, timeout=600)
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error: ")]
    assert bad.returncode == 2 and len(errors) == 1 and "full window of 3500 frames" in errors[0], bad.stderr
