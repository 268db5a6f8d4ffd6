"""Checkpoint → bundle: the steps of `python -m exporter`, with progress output on the long ones."""

from __future__ import annotations

import gc
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
from .options import PROMPT_LENGTH, ExportOptions

ENCODER_PACKAGE = "coreml/encoder.mlpackage"  # every encoder bucket, one function each


def _step(msg: str) -> float:
    tqdm.write(f"[export] {msg} ...")
    return time.perf_counter()


def _done(t0: float) -> None:
    tqdm.write(f"[export]   done in {time.perf_counter() - t0:.1f} s")


def export_bundle(ckpt: Checkpoint, out: Path, opts: ExportOptions) -> Path:
    """Write a complete bundle folder (model files, tokenizer, filterbank, manifest) to `out`. The model is
    released (ckpt.model is None) once every graph is written, before the weights are quantized and merged."""
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
    # ONNX: one encoder with a dynamic frame axis (keyed by the full window); Core ML: one per bucket.
    steps = [(b, f) for b in plan.backends
             for f in (*((max(plan.buckets),) if b == "onnx" else sorted(plan.buckets)), "decoder")]
    for backend, what in tqdm(steps, desc="export", unit="graph", disable=len(steps) < 3):
        precision = plan.onnx_precision if backend == "onnx" else plan.precision
        entry = backends.setdefault(backend, {"precision": precision, "encoders": {}})
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
            entry["decoder"], entry["prefill"] = _decoder_graphs(backend, graph, dims)
        else:
            entry["encoders"][str(what)] = graph
        if rel not in files:
            files.append(rel)
        if backend == "coreml":
            from .to_coreml import TARGET

            entry["minimum_deployment_target"] = TARGET

    # Every graph is written: the model (8 GB at the real size) goes before the weights are quantized or
    # merged, so those steps never sit next to it.
    source = _source(ckpt)
    ckpt.model = model = None
    gc.collect()
    if staged.get("onnx") and plan.onnx_precision == "int8":
        from .quantize import quantize_graphs

        t0 = _step("onnx: INT8 weights for MatMul/Gemm (one scale per output channel, one tensor at a time)")
        staged["onnx"] = quantize_graphs(staged["onnx"])
        _done(t0)
    if staged.get("onnx"):
        from .onnx_weights import share_weights

        t0 = _step("onnx: storing the weights of all graphs once, in onnx/weights.bin (one tensor at a time)")
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
                              max_new_tokens=plan.max_new_tokens, source=source)
    path = write_manifest(out, manifest, files)
    _done(t0)
    return path


def _graph_file(backend: str, what: int | str) -> tuple[str, str | None]:
    """(bundle file, function in it): ONNX has a file per graph; Core ML one encoder package, a function per
    bucket (the manifest names it), and the decoder package."""
    if backend == "onnx":
        return f"onnx/{'decoder_step' if what == 'decoder' else 'encoder'}.onnx", None
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
        return to_coreml.export_decoder(model, dims, precision, path, PROMPT_LENGTH)
    return to_coreml.export_encoder(model, dims, int(what), precision, path)


def _decoder_graphs(backend: str, step: dict[str, Any], dims: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's decoder step and prompt prefill: the same graph with a token axis. ONNX: one file whose
    token axis is dynamic (-1 in the manifest: any count); Core ML: the package's functions decoder_step and
    prefill (static, the prompt's length)."""
    from .contract import decoder_tensors

    if backend == "onnx":
        from .to_onnx import prefill_tensors

        ins, outs = prefill_tensors(dims)
        return step, {**step, "inputs": as_manifest(ins), "outputs": as_manifest(outs)}
    from . import to_coreml

    state = step["inputs"][2]["dtype"]  # self_k: the decoder's state dtype for this precision
    ins, outs = decoder_tensors(dims, to_coreml.INT, state, PROMPT_LENGTH)
    first, second = to_coreml.DECODER_FUNCTIONS
    return ({**step, "function": first},
            {**step, "function": second, "inputs": as_manifest(ins), "outputs": as_manifest(outs)})


def _source(ckpt: Checkpoint) -> dict[str, Any]:
    import transformers

    cfg = ckpt.model.config
    return {"checkpoint": ckpt.source, "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0], "model_type": cfg.model_type,
            "encoder_layers": cfg.encoder_config.num_hidden_layers,
            "encoder_hidden": cfg.encoder_config.hidden_size}
