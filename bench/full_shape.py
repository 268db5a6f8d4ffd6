"""P2/P3 at the full 2B shape: our ONNX pipeline vs transformers generate(), buckets vs padding, encoder FLOP/s.

    python -m bench.full_shape [--encoder-layers 48] [--decoder-layers 8] [--new-tokens 100] [--reps 3]
        [--out bench/results/full_shape.json] [--work build/full_shape] [--keep] [--reuse]

A CohereAsrForConditionalGeneration with the real config (transformers' defaults, model.md) and seeded random
weights is saved with a 16384-piece tokenizer that has the real ids of every piece the daemon reads, exported
with `python -m exporter --backends onnx --buckets 500,3500`, and timed on the same audio (seeded noise) with
the token count forced (ignore_eos / min_new_tokens):

    P2a  35 s window: transformers generate() ÷ our Transcriber.transcribe_window (ONNX Runtime)  goal ≥ 1.5
    P2b  5 s segment, ours: padded to 3500 frames ÷ bucket 500                                   goal ≥ 3
    P3   encoder FLOP/s (analytic count, `encoder_flops`) ÷ float32 matmul peak of this machine    goal ≥ 0.6
    peak RSS of the checkpoint build, of the export and of inference.

Every heavy step runs in its own subprocess (this process never loads a model), so each one's peak RSS is its
own (os.wait4). The two sides run as persistent workers and alternate run by run when both fit in memory at
once; otherwise (the 8 GB torch model next to ONNX Runtime's sessions) they run one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.flops import encoder_flops, export_extra_flops, graph_flops
from bench.procs import GUARD, Worker, WorkerError, measure, meminfo_mb, serve

ROOT = Path(__file__).resolve().parent.parent
MODULE = "bench.full_shape"  # each worker runs this module again with --phase

SR = 16000
WINDOW_S = 35.0
SEGMENT_S = 5.0
BUCKETS = (500, 3500)
REAL_VOCAB = 16384
FULL_ENCODER_LAYERS = 48
MB = 1 << 20


# --- the checkpoint -------------------------------------------------------------------------------------------

def write_real_layout_tokenizer(out: Path) -> Path:
    """A 16384-piece BPE SentencePiece model with the real ids of every piece the daemon reads.

    The real tokenizer is gated; its ordinary pieces do not change any timing. A small BPE is trained on
    exporter.tiny's sentences (exporter.spm), and its pieces are laid out at 16384: control pieces at 1–16,
    the 14 trained languages at their real ids (exporter.manifest.REAL_IDS), "▁" at 13764, the other ids
    below 256 as reserved user-defined pieces, the 256 byte pieces at 256–511, the trained BPE pieces after
    them and unique filler pieces up to 16384. exporter.manifest.token_ids checks these ids on export.
    """
    import tempfile

    from sentencepiece import sentencepiece_model_pb2 as pb

    from exporter.manifest import REAL_IDS
    from exporter.spm import CONTROL_PIECES, train_tokenizer
    from exporter.tiny import _TEXTS

    kind = pb.ModelProto.SentencePiece
    small = pb.ModelProto()
    with tempfile.TemporaryDirectory() as tmp:
        small.ParseFromString(train_tokenizer(_TEXTS * 4, 384, Path(tmp) / "t.model").read_bytes())
    layout: dict[int, tuple[str, int]] = {0: ("<unk>", kind.UNKNOWN)}
    layout.update({i: (p, kind.USER_DEFINED) for i, p in enumerate(CONTROL_PIECES, 1)})
    layout.update({i: (p, kind.USER_DEFINED) for p, i in REAL_IDS.items() if p.startswith("<|")})
    layout.update({i: (f"<|reserved{i}|>", kind.USER_DEFINED) for i in range(17, 256) if i not in layout})
    layout.update({256 + b: (f"<0x{b:02X}>", kind.BYTE) for b in range(256)})
    layout[REAL_IDS["\u2581"]] = ("\u2581", kind.NORMAL)
    free = (i for i in range(512, REAL_VOCAB) if i not in layout)
    for p in small.pieces:
        if p.type == kind.NORMAL and p.piece != "\u2581":
            layout[next(free)] = (p.piece, kind.NORMAL)
    layout.update({i: (f"\u2581fill{k}", kind.NORMAL) for k, i in enumerate(free)})
    model = pb.ModelProto()
    model.CopyFrom(small)
    del model.pieces[:]
    for i in range(REAL_VOCAB):
        text, type_ = layout[i]
        model.pieces.add(piece=text, type=type_, score=-float(i) if type_ == kind.NORMAL else 0.0)
    model.trainer_spec.vocab_size = REAL_VOCAB
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    return out


def full_config(encoder_layers: int, decoder_layers: int):  # -> CohereAsrConfig
    """transformers' CohereAsrConfig defaults (the real shape, model.md) with the layer counts given."""
    from transformers import CohereAsrConfig

    return CohereAsrConfig(encoder_config={"num_hidden_layers": encoder_layers}, num_hidden_layers=decoder_layers)


def phase_checkpoint(out: Path, encoder_layers: int, decoder_layers: int, seed: int) -> dict[str, Any]:
    """Write a seeded random checkpoint (save_pretrained in 1 GB shards + tokenizer.model) to `out`."""
    import torch
    from transformers import CohereAsrForConditionalGeneration

    from exporter.manifest import REAL_IDS

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = CohereAsrForConditionalGeneration(full_config(encoder_layers, decoder_layers)).eval()
    init_s = time.perf_counter() - t0
    model.generation_config.decoder_start_token_id = REAL_IDS["\u2581"]  # as the real generation_config
    model.save_pretrained(out, max_shard_size="1GB")  # shards keep the serialisation copy small
    write_real_layout_tokenizer(out / "tokenizer.model")
    return {"params": sum(p.numel() for p in model.parameters()), "init_seconds": round(init_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def audio(seconds: float, seed: int = 0):  # -> float32 (n,) noise, the same for both sides
    import numpy as np

    return (0.05 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


class Ours:
    """Worker: our daemon's Transcriber on the bundle (ONNX Runtime), bucketed and padded-to-3500 views."""

    def __init__(self, bundle: str, new_tokens: int) -> None:
        from dataclasses import replace

        from daemon.model.decode import DecodeOptions
        from daemon.model.transcriber import Transcriber, load_transcriber

        t0 = time.perf_counter()
        self.tr = load_transcriber(bundle, "onnx")  # verifies checksums, loads the decoder session
        self.load_seconds = time.perf_counter() - t0
        b = self.tr.bundle
        # Same backend and sessions; only the bucket list differs, so every window is padded to the full one.
        self.padded = Transcriber(replace(b, buckets=(b.window_frames,)), self.tr.backend, self.tr.tokenizer)
        self.options = DecodeOptions(ignore_eos=True, max_new_tokens=new_tokens)
        self.audio = {"window": audio(WINDOW_S), "segment": audio(SEGMENT_S)}

    def loaded(self) -> dict[str, Any]:
        return {"load_seconds": round(self.load_seconds, 1)}

    def window(self, which: str) -> dict[str, Any]:
        """which: p2a (35 s), bucket (5 s, smallest bucket) or padded (5 s padded to 3500 frames)."""
        tr = self.padded if which == "padded" else self.tr
        samples = self.audio["window" if which == "p2a" else "segment"]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prompt, result = tr.transcribe_window(samples, self.options, timings=timings)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "stages": timings, "new_tokens": len(result.tokens),
                "decoder_steps": len(prompt) + len(result.tokens) - 1}

    def profile(self, steps: int = 20) -> dict[str, Any]:
        """ONNX Runtime's per-op profile of the full-window encoder and of decoder steps (fresh sessions;
        the timed sessions are dropped first so their memory is free)."""
        import gc

        import numpy as np

        from daemon.model.decode import build_prompt, cross_inputs
        from daemon.model.features import log_mel, pad_frames

        tr, b = self.tr, self.tr.bundle
        spec = tr.backend.spec
        feats = pad_frames(log_mel(self.audio["window"], tr.features), b.window_frames)  # (1, n_mels, F)
        enc = tr.backend.encode(feats, b.window_frames)
        k, v, cross_mask = cross_inputs(b, enc, enc.cross_k.shape[3], np.float32)
        prompt = build_prompt(b, tr.tokenizer, "en", True)
        self.tr = self.padded = enc = None  # type: ignore[assignment]
        del tr
        gc.collect()
        cache = np.zeros((b.n_layers, 1, b.n_heads, b.cache_capacity, b.head_dim), np.float32)
        mask = np.full((1, 1, 1, b.cache_capacity), b.mask_value, np.float32)
        mask[..., :steps] = 0.0
        dec_feeds = [{"input_id": np.array([[prompt[0]]]), "position": np.array([i]), "self_k": cache,
                      "self_v": cache, "self_mask": mask, "cross_k": k, "cross_v": v, "cross_mask": cross_mask}
                     for i in range(steps)]
        enc_feeds = [{"input_features": feats, "feature_length": np.array([b.window_frames])}]
        return {"encoder_3500": _ort_profile(spec.encoders[b.window_frames].path, enc_feeds),
                "decoder_step": _ort_profile(spec.decoder.path, dec_feeds)}


def _ort_profile(path: Path, feeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Run `feeds` through a profiling session; milliseconds per run by op type (largest first)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.log_severity_level = 3
    opts.profile_file_prefix = f"/tmp/full_shape_profile_{os.getpid()}"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds[0])  # warm-up, profiled too; dropped below
    t0 = time.perf_counter()
    for f in feeds:
        sess.run(None, f)
    wall_ms = 1000 * (time.perf_counter() - t0) / len(feeds)
    trace = Path(sess.end_profiling())
    events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node"
              and e.get("name", "").endswith("_kernel_time")]
    trace.unlink()
    by_op: dict[str, float] = {}
    runs = len(feeds) + 1
    for e in events[len(events) // runs:]:  # skip the warm-up run's nodes
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1000 / len(feeds)
    total = sum(by_op.values())
    return {"wall_ms_per_run": round(wall_ms, 2), "kernel_ms_per_run": round(total, 2),
            "by_op_ms": {op: round(ms, 2) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:10]},
            "matmul_share": round(sum(ms for op, ms in by_op.items()
                                      if op in ("MatMul", "Gemm", "FusedMatMul", "Conv", "FusedConv",
                                                "FusedGemm")) / total, 3)}


class Reference:
    """Worker: transformers generate() on the checkpoint, the encoder timed with forward hooks."""

    def __init__(self, checkpoint: str, new_tokens: int) -> None:
        import torch
        from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

        from daemon.model.tokenizer import Tokenizer
        from exporter.manifest import PROMPT_TEMPLATE

        t0 = time.perf_counter()
        self.model = CohereAsrForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.load_seconds = time.perf_counter() - t0
        self.fe = CohereAsrFeatureExtractor()
        tok = Tokenizer(Path(checkpoint) / "tokenizer.model")
        self.prompt = [tok.piece_id(p.replace("{language}", "en").replace("{punctuation}", "<|pnc|>"))
                       for p in PROMPT_TEMPLATE]
        self.new_tokens = new_tokens
        self.audio = {"window": audio(WINDOW_S), "segment": audio(SEGMENT_S)}
        self.encoder_seconds = 0.0
        enc = self.model.model.encoder
        enc.register_forward_pre_hook(lambda *_: setattr(self, "_t_enc", time.perf_counter()))
        enc.register_forward_hook(lambda *_: setattr(
            self, "encoder_seconds", self.encoder_seconds + time.perf_counter() - self._t_enc))

    def loaded(self) -> dict[str, Any]:
        import torch

        return {"load_seconds": round(self.load_seconds, 1), "torch_threads": torch.get_num_threads(),
                "attn_implementation": self.model.config._attn_implementation}

    def window(self, which: str) -> dict[str, Any]:
        """which: p2a (35 s) or segment (5 s): features + generate(), greedy, exactly new_tokens tokens."""
        import torch

        samples = self.audio["window" if which == "p2a" else "segment"]
        self.encoder_seconds = 0.0
        t0 = time.perf_counter()
        f = self.fe(samples, sampling_rate=SR, return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_features=f["input_features"], attention_mask=f["attention_mask"],
                                      decoder_input_ids=torch.tensor([self.prompt]), num_beams=1, do_sample=False,
                                      max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens)
        t2 = time.perf_counter()
        return {"seconds": t2 - t0, "new_tokens": int(out.shape[1]) - len(self.prompt),
                "stages": {"features": t1 - t0, "encoder": self.encoder_seconds,
                           "decoder": t2 - t1 - self.encoder_seconds}}


def phase_peak(threads: int, n: int = 4096, reps: int = 5) -> dict[str, Any]:
    """Best-of-`reps` float32 n×n matmul GFLOP/s with `threads` threads (torch, numpy, ONNX Runtime), and
    the memory copy bandwidth (numpy, 256 MB arrays) that bounds the decoder step."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                          [numpy_helper.from_array(b, "b")])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    flop = 2.0 * n**3
    gflops = {"torch": flop / best(lambda: torch.mm(ta, tb)) / 1e9, "numpy": flop / best(lambda: a @ b) / 1e9,
              "onnxruntime": flop / best(lambda: sess.run(None, {"a": a})) / 1e9}
    src = np.ones(64 * MB, np.float32)
    dst = np.empty_like(src)
    copy_s = best(lambda: np.copyto(dst, src))
    return {"threads": threads, "n": n, "gflops": {k: round(v, 1) for k, v in gflops.items()},
            "peak_gflops": round(max(gflops.values()), 1), "copy_gb_s": round(2 * src.nbytes / copy_s / 1e9, 1)}


# --- orchestration --------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    import onnxruntime as ort

    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(), "ram_gb": round(meminfo_mb("MemTotal") / 1024, 1),
            "onnxruntime": ort.__version__, "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def _phase_cmd(phase: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", MODULE, "--phase", phase, *extra]


def _phase_json(res: dict[str, Any], path: Path) -> dict[str, Any]:
    return {**res, **json.loads(path.read_text())} if res["rc"] == 0 and path.exists() else res


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stages = {s: statistics.median(r["stages"][s] for r in runs) for s in runs[0]["stages"]}
    out = {"median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
           "runs_seconds": [round(r["seconds"], 3) for r in runs], "new_tokens": runs[0]["new_tokens"],
           "median_stages_seconds": {s: round(v, 3) for s, v in stages.items()}}
    if "decoder_steps" in runs[0]:
        out["decoder_steps"] = runs[0]["decoder_steps"]
        out["decoder_ms_per_step"] = round(1000 * stages["decoder"] / runs[0]["decoder_steps"], 2)
    return out


class Side:
    """One worker and the runs taken from it. A failure is noted once and ends the side; the other goes on."""

    def __init__(self, name: str, notes: list[str], memory: list[dict[str, Any]]) -> None:
        self.name, self.notes, self.memory = name, notes, memory
        self.worker: Worker | None = None
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.info: dict[str, Any] = {}

    def start(self, phase: str, args: list[str], log: Path, warm: list[str], load_label: str) -> None:
        """Start the worker, then one untimed window per case in `warm` (the first one's peak RSS is
        reported as load + one window)."""
        self.worker = Worker(MODULE, phase, args, log)
        first = self.call("loaded")
        for i, which in enumerate(warm):
            r = self.call("window", which=which)
            if r is not None and i == 0 and first is not None:
                self.memory.append({"name": load_label, "peak_rss_mb": r["peak_rss_mb"],
                                    "after_load_rss_mb": first["rss_mb"]})
                self.info.update({k: v for k, v in first.items() if k not in ("rss_mb", "peak_rss_mb")},
                                 first_window_seconds=round(r["seconds"], 2))

    def call(self, cmd: str, **kw: Any) -> dict[str, Any] | None:
        if self.worker is None:
            return None
        try:
            return self.worker.call(cmd, **kw)
        except WorkerError as e:
            self.notes.append(f"{self.name}: {e}")
            self.finish("until it failed")
            return None

    def time(self, which: str) -> None:
        r = self.call("window", which=which)
        if r is not None:
            self.runs.setdefault(which, []).append(r)

    def finish(self, what: str) -> None:
        if self.worker is not None:
            w, self.worker = self.worker, None
            life = w.close()
            self.memory.append({"name": f"{self.name}: whole worker ({what})", "peak_rss_mb": life["peak_rss_mb"],
                                **({"killed": life["killed"]} if "killed" in life else {})})

    def results(self) -> dict[str, Any]:
        return {**self.info, **{k: _median_run(v) for k, v in self.runs.items()}}


def run_sides(args: argparse.Namespace, bundle: Path | None, ckpt: Path, work: Path, params: int,
              notes: list[str]) -> dict[str, Any]:
    """Load each side once and warm it up, then time it: alternating run by run when both fit in memory,
    else one side after the other."""
    memory: list[dict[str, Any]] = []
    n = str(args.new_tokens)
    ours = Side("inference, ours (ORT)", notes, memory)
    ref = Side("inference, transformers", notes, memory)
    if bundle is not None:  # warm: p2a loads the 3500 session, bucket the 500 one
        ours.start("ours", ["--bundle", str(bundle), "--new-tokens", n], work / "ours.log", ["p2a", "bucket"],
                   "inference, ours (ORT): bundle load + one 35 s window (bucket 3500 session only)")
    torch_need = 4 * params / MB * 1.15 + 1500  # fp32 weights + activations and libraries, MB
    avail = meminfo_mb("MemAvailable")
    together = args.mode == "concurrent" or (args.mode == "auto" and avail > torch_need + 1500)
    mode = "alternating, both loaded" if together or ours.worker is None else "sequential, one side at a time"
    notes.append(f"sides run {mode}: MemAvailable {avail:.0f} MB with ours loaded, transformers needs "
                 f"≈ {torch_need:.0f} MB")

    def start_reference() -> None:
        ref.start("reference", ["--checkpoint", str(ckpt), "--new-tokens", n], work / "reference.log", ["p2a"],
                  "inference, transformers: from_pretrained + one 35 s generate()")

    ref_first = together or ours.worker is None
    if ref_first:
        start_reference()
    for _ in range(args.reps):
        for which in ("p2a", "bucket", "padded"):
            ours.time(which)
        ref.time("p2a")
    if args.profile and (prof := ours.call("profile")) is not None:
        ours.info["ort_profile"] = {k: v for k, v in prof.items() if k not in ("rss_mb", "peak_rss_mb")}
    ours.finish("both buckets loaded, all runs" + (" and the profiling sessions" if args.profile else ""))
    if not ref_first:
        start_reference()
        for _ in range(args.reps):
            ref.time("p2a")
    ref.finish("all runs")
    return {"mode": mode, "ours": ours.results(), "reference": ref.results(), "memory": memory}


def comparisons(sides: dict[str, Any], flops: dict[str, Any], peak: dict[str, Any]) -> list[dict[str, Any]]:
    """The P2/P3 ratios from the medians."""
    ours, ref = sides["ours"], sides["reference"]
    out = []

    def add(name: str, o: float, r: float, unit: str, ratio: float, goal: float | None) -> None:
        out.append({"name": name, "ours": round(o, 3), "reference": round(r, 3), "unit": unit,
                    "ratio": round(ratio, 3), "goal": goal, "met": None if goal is None else ratio >= goal})

    if "p2a" in ours and "p2a" in ref:
        o, r = ours["p2a"]["median_seconds"], ref["p2a"]["median_seconds"]
        add("P2a: 35 s window, transformers generate() ÷ ours (ORT), same forced token count", o, r, "s", r / o,
            1.5)
    if "bucket" in ours:
        o, r = ours["bucket"]["median_seconds"], ours["padded"]["median_seconds"]
        add("P2b: 5 s segment, ours padded to 3500 frames ÷ ours with bucket 500 (whole window)", o, r, "s",
            r / o, 3.0)
        o, r = ours["bucket"]["median_stages_seconds"]["encoder"], ours["padded"]["median_stages_seconds"]["encoder"]
        add("P2b (encoder stage only): padded 3500 ÷ bucket 500", o, r, "s", r / o, None)
    pk = peak.get("peak_gflops")
    if pk and "p2a" in ours:
        gf = (flops["encoder"]["total"] + flops["export_extra"]) / ours["p2a"]["median_stages_seconds"]["encoder"] / 1e9
        add("P3: ours (ORT) encoder GFLOP/s ÷ float32 matmul peak", gf, pk, "GFLOP/s", gf / pk, 0.6)
    if pk and "p2a" in ref:
        gf = flops["encoder"]["total"] / ref["p2a"]["median_stages_seconds"]["encoder"] / 1e9
        add("P3 (reference): transformers encoder GFLOP/s ÷ float32 matmul peak", gf, pk, "GFLOP/s", gf / pk,
            None)
    return out


def extrapolate(sides: dict[str, Any], flops: dict[str, Any], cfg_flops_full: dict[str, Any]) -> dict[str, Any]:
    """Times at 48 encoder layers from a smaller run: each encoder time scaled by the analytic FLOP ratio
    (the same achieved FLOP/s); features and decoder unchanged (they do not depend on encoder layers)."""
    scale = cfg_flops_full["total"] / flops["encoder"]["total"]
    seg_scale = cfg_flops_full["segment_total"] / flops["encoder_segment"]["total"]
    out: dict[str, Any] = {"encoder_time_scale_35s": round(scale, 3), "encoder_time_scale_5s": round(seg_scale, 3)}
    for side, key, s in (("ours", "p2a", scale), ("reference", "p2a", scale), ("ours", "bucket", seg_scale),
                         ("ours", "padded", scale)):
        st = sides[side].get(key, {}).get("median_stages_seconds")
        if st:
            out[f"{side}_{key}_seconds"] = round(sum(st.values()) - st["encoder"] + s * st["encoder"], 2)
    if "ours_p2a_seconds" in out and "reference_p2a_seconds" in out:
        out["P2a_ratio"] = round(out["reference_p2a_seconds"] / out["ours_p2a_seconds"], 3)
    if "ours_bucket_seconds" in out and "ours_padded_seconds" in out:
        out["P2b_ratio"] = round(out["ours_padded_seconds"] / out["ours_bucket_seconds"], 3)
    return out


def bundle_files(bundle: Path) -> dict[str, Any]:
    """Sizes of the bundle's files, and files in it that the manifest does not list (left-overs)."""
    listed = set(json.loads((bundle / "manifest.json").read_text())["files"])
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in bundle.rglob("*") if p.is_file()}
    extra = {f: s for f, s in files.items() if f not in listed and f != "manifest.json"}
    return {"listed_mb": {f: round(files[f] / MB, 1) for f in sorted(listed)},
            "unlisted_count": len(extra), "unlisted_mb": round(sum(extra.values()) / MB, 1),
            "unlisted_examples": sorted(extra)[:5]}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / f"enc{args.encoder_layers}-dec{args.decoder_layers}"
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle = work / "checkpoint", work / "bundle"
    notes: list[str] = []
    memory: list[dict[str, Any]] = []
    steps: dict[str, Any] = {}
    start = time.perf_counter()
    mach = machine()
    print(f"[full_shape] work dir {work}", file=sys.stderr)

    steps["peak"] = _phase_json(measure(_phase_cmd("peak", "--phase-out", str(work / "peak.json")),
                                        work / "peak.log"), work / "peak.json")
    if args.reuse and (ckpt / "tokenizer.model").exists():
        steps["checkpoint"] = {"reused": str(ckpt), **json.loads((work / "checkpoint.json").read_text())}
    else:
        shutil.rmtree(ckpt, ignore_errors=True)
        r = measure(_phase_cmd("checkpoint", "--checkpoint", str(ckpt), "--encoder-layers", str(args.encoder_layers),
                               "--decoder-layers", str(args.decoder_layers), "--phase-out",
                               str(work / "checkpoint.json")), work / "checkpoint.log")
        steps["checkpoint"] = _phase_json(r, work / "checkpoint.json")
        memory.append({"name": "checkpoint build (random init + save_pretrained)", "peak_rss_mb": r["peak_rss_mb"]})
        if r["rc"] != 0:
            raise SystemExit("building the checkpoint failed:\n" + "\n".join(r["log_tail"]))
    print(f"[full_shape] checkpoint: {steps['checkpoint'].get('seconds')} s", file=sys.stderr)

    if args.reuse and (bundle / "manifest.json").exists():
        steps["export"] = {"reused": str(bundle)}
    else:
        shutil.rmtree(bundle, ignore_errors=True)
        cmd = [sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(bundle), "--backends", "onnx",
               "--buckets", ",".join(map(str, BUCKETS))]
        steps["export"] = measure(cmd, work / "export.log", args.export_timeout)
        memory.append({"name": "export (python -m exporter, onnx, buckets 500 and 3500)",
                       "peak_rss_mb": steps["export"]["peak_rss_mb"]})
        if steps["export"]["rc"] != 0:
            notes.append(f"export failed (exit {steps['export']['rc']}); see steps.export.log_tail")
    print(f"[full_shape] export: {steps['export']}", file=sys.stderr)
    ok = (bundle / "manifest.json").exists()
    cfg = full_config(args.encoder_layers, args.decoder_layers)
    flops: dict[str, Any] = {"encoder": encoder_flops(cfg.encoder_config, BUCKETS[-1]),
                             "encoder_segment": encoder_flops(cfg.encoder_config, int(SEGMENT_S * 100)),
                             "export_extra": export_extra_flops(cfg, -(-BUCKETS[-1] // 8))}
    # ONNX Runtime folds the positional encoding and linear_pos (input-independent at a fixed frame count)
    # into constants at session load, so it executes that much less than the model's count.
    flops["ort_executed_encoder_graph_3500"] = (flops["encoder"]["total"] + flops["export_extra"]
                                                - args.encoder_layers * flops["encoder"]["per_layer_parts"]["linear_pos"])
    if ok:
        steps["bundle_files"] = bundle_files(bundle)
        flops["onnx_graph_encoder_3500"] = graph_flops(bundle / "onnx" / f"encoder_{BUCKETS[-1]}.onnx")
    sides = run_sides(args, bundle if ok else None, ckpt, work, steps["checkpoint"]["params"], notes)
    memory += sides.pop("memory")
    peak = steps["peak"]
    result = {
        "command": "python -m bench.full_shape " + shlex.join(sys.argv[1:]),
        "machine": mach,
        "shape": {"encoder_layers": args.encoder_layers, "decoder_layers": args.decoder_layers,
                  "encoder_hidden": 1280, "decoder_hidden": 1024, "vocab": REAL_VOCAB,
                  "params": steps["checkpoint"]["params"], "window_s": WINDOW_S, "segment_s": SEGMENT_S,
                  "buckets": list(BUCKETS), "new_tokens": args.new_tokens, "reps": args.reps,
                  "audio": "seeded Gaussian noise, std 0.05"},
        "comparisons": comparisons(sides, flops, peak),
        "memory": memory,
        "stages": sides,
        "flops": flops,
        "matmul_peak": {k: v for k, v in peak.items() if k not in ("log_tail", "command")},
        "steps": steps,
        "notes": notes,
    }
    if args.encoder_layers != FULL_ENCODER_LAYERS:
        full = full_config(FULL_ENCODER_LAYERS, args.decoder_layers).encoder_config
        ff = {"total": encoder_flops(full, BUCKETS[-1])["total"],
              "segment_total": encoder_flops(full, int(SEGMENT_S * 100))["total"]}
        result["extrapolated_to_48_encoder_layers"] = {
            "label": "EXTRAPOLATED, not measured: encoder times scaled by the analytic FLOP ratio",
            **extrapolate(sides, flops, ff)}
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def run_phase(args: argparse.Namespace) -> None:
    """Inside a subprocess: one phase."""
    if args.phase == "ours":
        serve(Ours(args.bundle, args.new_tokens))
    elif args.phase == "reference":
        serve(Reference(args.checkpoint, args.new_tokens))
    else:
        res = (phase_peak(os.cpu_count() or 1) if args.phase == "peak"
               else phase_checkpoint(Path(args.checkpoint), args.encoder_layers, args.decoder_layers, args.seed))
        Path(args.phase_out).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder-layers", type=int, default=FULL_ENCODER_LAYERS)
    ap.add_argument("--decoder-layers", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--mode", choices=("auto", "concurrent", "sequential"), default="auto",
                    help="whether both sides stay loaded and alternate (auto: when memory allows)")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip ORT per-op profiling")
    ap.add_argument("--export-timeout", type=float, default=3600.0, help="seconds before the export is killed")
    ap.add_argument("--memory-floor-mb", type=float, default=1500.0,
                    help="kill our subprocesses when MemAvailable falls below this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "full_shape")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle (several GB)")
    ap.add_argument("--reuse", action="store_true", help="reuse a kept checkpoint/bundle of the same shape")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "full_shape.json")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        run_phase(args)
        return
    GUARD.floor_mb = args.memory_floor_mb
    result = orchestrate(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: result[k] for k in ("comparisons", "memory", "notes")}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
