"""Checkpoint → bundle: the steps of `python -m exporter`, with progress output on the long ones."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from daemon.model.bundle import window_frames

from .contract import as_manifest, dims_of
from .load import Checkpoint
from .manifest import build_manifest, write_manifest
from .options import ExportOptions

ENCODER_PACKAGE = "coreml/encoder.mlpackage"  # every encoder bucket, one function each


def _step(msg: str) -> float:
    tqdm.write(f"[export] {msg} ...")
    return time.perf_counter()


def _done(t0: float) -> None:
    tqdm.write(f"[export]   done in {time.perf_counter() - t0:.1f} s")


def export_bundle(ckpt: Checkpoint, out: Path, opts: ExportOptions) -> Path:
    """Write a complete bundle folder (model files, tokenizer, filterbank, manifest) to `out`."""
    model = ckpt.model
    fe = ckpt.feature_extractor
    plan = opts.for_model(model.config.max_position_embeddings,
                          window_frames(fe.max_audio_clip_s, fe.sampling_rate, fe.hop_length))
    if plan.note:
        tqdm.write(f"[export] {plan.note}")
    out.mkdir(parents=True, exist_ok=True)
    dims = dims_of(model, plan.cache_capacity, max(plan.buckets))
    files = ["tokenizer.model", "mel_filters.npy", "window.npy"]
    shutil.copyfile(ckpt.tokenizer_path, out / "tokenizer.model")
    np.save(out / "mel_filters.npy", ckpt.feature_extractor.mel_filters.numpy().astype(np.float32))
    np.save(out / "window.npy", torch.hann_window(ckpt.feature_extractor.win_length, periodic=False).numpy())

    backends: dict[str, Any] = {}
    staging = {b: out / b / ".staging" for b in plan.backends}  # per-graph files before they are merged
    staged: dict[str, dict[str, Path]] = {b: {} for b in plan.backends}  # ONNX: file, Core ML: function -> copy
    for folder in staging.values():
        shutil.rmtree(folder, ignore_errors=True)  # what a failed export left
    steps = [(b, f) for b in plan.backends for f in (*sorted(plan.buckets), "decoder")]
    for backend, what in tqdm(steps, desc="export", unit="graph", disable=len(steps) < 3):
        entry = backends.setdefault(backend, {"precision": "fp32" if backend == "onnx" else plan.precision,
                                              "encoders": {}})
        rel, function = _graph_file(backend, what)
        t0 = _step(f"{backend}: {'tracing and converting' if backend == 'coreml' else 'exporting'} "
                   f"{rel}{f' ({function})' if function else ''}")
        dest = out / rel
        if backend == "onnx" or function is not None:  # merged below
            name = function or Path(rel).stem
            dest = staging[backend] / name / f"{name}{Path(rel).suffix}"
            staged[backend][function or rel] = dest
        ins, outs = _export_graph(backend, what, model, dims, plan.precision, dest)
        _done(t0)
        graph = {"file": rel, **({"function": function} if function else {}),
                 "inputs": as_manifest(ins), "outputs": as_manifest(outs)}
        if what == "decoder":
            entry["decoder"] = graph
        else:
            entry["encoders"][str(what)] = graph
        if rel not in files:
            files.append(rel)
        if backend == "coreml":
            from .to_coreml import TARGET

            entry["minimum_deployment_target"] = TARGET

    if staged.get("onnx"):
        from .onnx_weights import share_weights

        t0 = _step("onnx: storing the weights of all graphs once, in onnx/weights.bin")
        graphs = staged["onnx"]
        size = share_weights([out / f for f in graphs], out / "onnx" / "weights.bin", sources=list(graphs.values()))
        files.append("onnx/weights.bin")
        tqdm.write(f"[export]   {size / 1e6:.1f} MB of weights")
        _done(t0)
    if staged.get("coreml"):
        from .to_coreml import merge_functions

        t0 = _step(f"coreml: one multifunction package for the {len(staged['coreml'])} encoder buckets, "
                   "weights stored once")
        merge_functions(staged["coreml"], out / ENCODER_PACKAGE)
        _done(t0)
    for folder in staging.values():
        shutil.rmtree(folder, ignore_errors=True)

    t0 = _step("writing manifest.json with checksums")
    manifest = build_manifest(dims=dims, buckets=list(plan.buckets), feature_extractor=ckpt.feature_extractor,
                              tokenizer_path=out / "tokenizer.model", backends=backends,
                              max_new_tokens=plan.max_new_tokens, source=_source(ckpt))
    path = write_manifest(out, manifest, files)
    _done(t0)
    return path


def _graph_file(backend: str, what: int | str) -> tuple[str, str | None]:
    """(bundle file, function in it): ONNX has a file per graph; Core ML one encoder package, a function per
    bucket (the manifest names it), and the decoder package."""
    if backend == "onnx":
        return f"onnx/{'decoder_step' if what == 'decoder' else f'encoder_{what}'}.onnx", None
    if what == "decoder":
        return "coreml/decoder_step.mlpackage", None
    return ENCODER_PACKAGE, f"encoder_{what}"


def _export_graph(backend: str, what: int | str, model: torch.nn.Module, dims: Any, precision: str,
                  path: Path) -> tuple[list, list]:
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if backend == "onnx":
        from . import to_onnx

        if what == "decoder":
            return to_onnx.export_decoder(model, dims, path)
        return to_onnx.export_encoder(model, dims, int(what), path)
    from . import to_coreml

    if what == "decoder":
        return to_coreml.export_decoder(model, dims, precision, path)
    return to_coreml.export_encoder(model, dims, int(what), precision, path)


def _source(ckpt: Checkpoint) -> dict[str, Any]:
    import transformers

    cfg = ckpt.model.config
    return {"checkpoint": ckpt.source, "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "model_type": cfg.model_type,
            "encoder_layers": cfg.encoder_config.num_hidden_layers,
            "encoder_hidden": cfg.encoder_config.hidden_size}
