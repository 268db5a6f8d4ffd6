"""bench.full_shape's building blocks, at tiny sizes: the real-layout tokenizer, the FLOP count against the
exported graph, and the memory guard (the full-shape run itself takes minutes and ~17 GB)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.flops import encoder_flops, export_extra_flops, graph_flops
from bench.full_shape import full_config, write_real_layout_tokenizer
from bench.procs import MemoryGuard

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # the export toolchain (exporter, transformers)
def test_tokenizer_has_16384_pieces_with_the_real_ids(tmp_path):
    from daemon.model.tokenizer import Tokenizer
    from exporter.manifest import PROMPT_TEMPLATE, token_ids

    path = write_real_layout_tokenizer(tmp_path / "tokenizer.model")
    special, languages = token_ids(path)  # raises if any id differs from Cohere Transcribe's (16384 pieces)
    assert languages["en"] == 62 and special["\u2581"] == 13764
    tok = Tokenizer(path)
    assert tok.vocab_size == 16384
    prompt = [tok.piece_id(p.replace("{language}", "en").replace("{punctuation}", "<|pnc|>"))
              for p in PROMPT_TEMPLATE]
    assert prompt == [13764, 7, 4, 16, 62, 62, 5, 9, 11, 13]  # reference/model.md §6
    text = "turn on the kitchen lights, ¿qué tal? 東京"
    assert tok.decode(tok.encode(text)) == text  # ordinary pieces and byte fallback still work


@pytest.mark.slow  # the export toolchain (exporter, transformers)
def test_real_shape_flops_per_layer():
    f = encoder_flops(full_config(48, 8).encoder_config, 3500)
    assert f["frames_out"] == 438
    assert f["per_layer"] == pytest.approx(37.851e9, rel=1e-4)
    assert f["total"] == pytest.approx(1826.7e9, rel=1e-4)
    # the linear layers alone: 2 FLOPs per weight per frame (FF 4×1280×5120, q/k/v/o 4×1280², conv 3×1280²)
    linear = 2 * 438 * (4 * 1280 * 5120 + 4 * 1280**2 + 3 * 1280**2)
    assert f["per_layer"] - f["per_layer_parts"]["linear_pos"] - f["per_layer_parts"]["attention_scores"] \
        == pytest.approx(linear + 2 * 438 * 1280 * 9, rel=1e-9)


@pytest.mark.slow  # the export toolchain (exporter, transformers)
@pytest.mark.parametrize("frames", [500, 1003])
def test_flop_count_equals_the_exported_graphs(tmp_path, frames):
    """encoder_flops + export_extra_flops == every MatMul/Conv of our exported encoder graph."""
    import torch
    from transformers import CohereAsrForConditionalGeneration

    from exporter.contract import dims_of
    from exporter.tiny import PRESETS, tiny_config
    from exporter.to_onnx import export_encoder

    torch.manual_seed(0)
    model = CohereAsrForConditionalGeneration(tiny_config(PRESETS["a"])).eval()
    path = tmp_path / "encoder.onnx"
    export_encoder(model, dims_of(model, 32, frames), frames, path)
    f = encoder_flops(model.config.encoder_config, frames)
    counted = graph_flops(path, frames)  # the encoder's frame axis is dynamic: counted at `frames`
    assert counted["constant_folded"] == 0
    assert counted["executed"] == pytest.approx(f["total"] + export_extra_flops(model.config, f["frames_out"]),
                                                rel=1e-9)


def test_memory_guard_kills_a_watched_process():
    guard = MemoryGuard(floor_mb=float("inf"))  # every poll is "short of memory"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    guard.watch(p)
    t0 = time.monotonic()
    assert p.wait(timeout=10) != 0
    assert time.monotonic() - t0 < 5
    assert "memory guard" in (guard.tripped_by(p.pid) or "")


def test_goals_and_the_bucket_decision_follow_the_numbers():
    """The memory goals (export ≤ 12 GB, daemon RSS after warm-up ≤ 1.2 × weights) and the dynamic-vs-buckets
    decision are read off the measured rows, both ways."""
    from bench.full_shape import decision_note, goals

    memory = [{"name": "export (python -m exporter --backends onnx)", "peak_rss_mb": 11113},
              {"name": "export (python -m exporter --backends onnx --onnx-precision int8)", "peak_rss_mb": 11500}]
    sides = {"ours_fp32": {"rss_after_warm_up_mb": 9500}, "ours_int8": {"rss_after_warm_up_mb": 2400}}
    rows = goals(memory, sides, {"fp32": 7874.0, "int8": 2100.0})
    assert [(r["value"], r["met"]) for r in rows] == [(11.65, True), (12.06, False), (1.207, False), (1.143, True)]

    def timing(ratio_500: float, ratio_3500: float) -> list[dict]:
        return [{"name": f"encoder alone, {f} frames ({f / 100:g} s): median s", "bucket ÷ dynamic": r}
                for f, r in ((500, ratio_500), (3500, ratio_3500))]

    assert decision_note([]) is None
    assert decision_note(timing(0.95, 1.02)).startswith("decision: one ONNX encoder session")
    assert "sharing initializers across bucket sessions" in decision_note(timing(0.95, 0.85))
