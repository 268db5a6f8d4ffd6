"""P2/P3 and the memory goals at the full 2B shape: our ONNX pipeline vs transformers generate(), a segment at
its own length vs padded, one dynamic encoder session vs a session per bucket, export and daemon memory.

    python -m bench.full_shape [--encoder-layers 48] [--decoder-layers 8] [--new-tokens 100] [--reps 3] [--int8]
        [--out bench/results/full_shape.json] [--work build/full_shape] [--keep] [--reuse]

A CohereAsrForConditionalGeneration with the real config (transformers' defaults, model.md) and seeded random
weights is saved with a 16384-piece tokenizer that has the real ids of every piece the daemon reads, exported
with `python -m exporter --backends onnx` (and `--onnx-precision int8` with --int8), and timed on the same audio
(seeded noise) with the token count forced (ignore_eos / min_new_tokens):

    P2a  35 s window: transformers generate() ÷ our Transcriber.transcribe_window (ONNX Runtime)   goal ≥ 2
    P2b  5 s segment, ours: padded to 3500 frames and cross length 438 ÷ at its own 500 frames (63)  goal ≥ 3
    P3   encoder FLOP/s (analytic count, `encoder_flops`) ÷ float32 matmul peak of this machine     goal ≥ 0.6
    the encoder alone on 500 and 3500 frames: one dynamic session vs a session per bucket (the same graph with
    its frame axis fixed), and each one's memory: the decision recorded in docs/benchmarks.md;
    peak RSS of the checkpoint build and of the export (goal ≤ 12 GB), and the daemon's RSS after its
    warm-up ÷ the bundle's ONNX weights (goal ≤ 1.2).

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
    """Worker: our daemon's Transcriber on the bundle (ONNX Runtime): each window at its own length, and a view
    that pads a 5 s segment to the full window (3500 frames, cross length 438) as the daemon did before."""

    def __init__(self, bundle: str, new_tokens: int) -> None:
        import copy

        from daemon.model.decode import DecodeOptions
        from daemon.model.transcriber import Transcriber, load_transcriber

        t0 = time.perf_counter()
        self.tr = load_transcriber(bundle, "onnx")  # verifies checksums, loads the decoder session
        self.load_seconds = time.perf_counter() - t0
        b = self.tr.bundle
        # The same sessions; this view pads every window to the full one and the cross K/V to its 438 frames.
        padded = copy.copy(self.tr.backend)
        padded.input_frames = lambda n_valid: b.window_frames  # type: ignore[method-assign]
        padded.cross_length = lambda frames: b.cross_frames  # type: ignore[method-assign]
        self.padded = Transcriber(b, padded, self.tr.tokenizer)
        self.options = DecodeOptions(ignore_eos=True, max_new_tokens=new_tokens)
        self.audio = {"window": audio(WINDOW_S), "segment": audio(SEGMENT_S)}

    def loaded(self) -> dict[str, Any]:
        return {"load_seconds": round(self.load_seconds, 1)}

    def warm_up(self) -> dict[str, Any]:
        """The daemon's own warm-up (Transcriber.warm_up), as `serve` runs it before model_loaded."""
        t0 = time.perf_counter()
        self.tr.warm_up()
        return {"seconds": round(time.perf_counter() - t0, 1)}

    def window(self, which: str) -> dict[str, Any]:
        """which: p2a (35 s), segment (5 s at its own 500 frames) or padded (5 s padded to 3500 frames)."""
        tr = self.padded if which == "padded" else self.tr
        samples = self.audio["window" if which == "p2a" else "segment"]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        _, result = tr.transcribe_window(samples, self.options, timings=timings)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "stages": timings, "new_tokens": len(result.tokens),
                "decoder_steps": result.n_steps}

    def encoder(self, frames: int, reps: int) -> dict[str, Any]:
        """The encoder alone on `frames` frames of features (all valid), `reps` times."""
        return _time_encoder(lambda f: self.tr.backend.encode(f, f.shape[-1]), frames, reps)

    def profile(self, steps: int = 20) -> dict[str, Any]:
        """ONNX Runtime's per-op profile of the full-window encoder and of decoder steps (fresh sessions;
        the timed sessions are dropped first so their memory is free)."""
        import gc

        import numpy as np

        from daemon.model.decode import build_prompt, cross_inputs, layer_views
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
        arrays = {"self_k": cache, "self_v": cache, "cross_k": k, "cross_v": v}
        state = {"self_mask": mask, "cross_mask": cross_mask, **arrays, **layer_views(arrays, b.n_layers)}
        names = {t.name for t in spec.decoder.inputs}  # stacked or per layer (self_k_0 ...), as the graph declares
        dec_feeds = [{"input_id": np.array([[prompt[0]]]), "position": np.array([i]),
                      **{n: a for n, a in state.items() if n in names}} for i in range(steps)]
        enc_feeds = [{"input_features": feats, "feature_length": np.array([b.window_frames])}]
        return {"encoder_3500": _ort_profile(spec.encoders[b.window_frames].path, enc_feeds),
                "decoder_step": _ort_profile(spec.decoder.path, dec_feeds)}


def _features(frames: int):  # -> (1, n_mels, frames) float32: log-mel-like noise, the same for every side
    import numpy as np

    return np.random.default_rng(frames).standard_normal((1, 128, frames)).astype(np.float32)


def _time_encoder(run: Any, frames: int, reps: int) -> dict[str, Any]:
    feats = _features(frames)
    run(feats)  # warm-up (first run at this shape)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run(feats)
        times.append(time.perf_counter() - t0)
    return {"frames": frames, "median_seconds": round(statistics.median(times), 3),
            "runs_seconds": [round(t, 3) for t in times]}


class Buckets:
    """Worker: the alternative to one dynamic encoder, a session per bucket: the same encoder.onnx with its
    frame axis fixed (SessionOptions.add_free_dimension_override_by_name), so ONNX Runtime can specialise
    the graph to the bucket (fold the positional branch). One session at a time: each holds its own weights."""

    def __init__(self, bundle: str) -> None:
        from daemon.model.bundle import load_bundle

        b = load_bundle(bundle)
        self.path = b.backends["onnx"].encoders[b.window_frames].path

    def loaded(self) -> dict[str, Any]:
        return {}

    def encoder(self, frames: int, reps: int) -> dict[str, Any]:
        import gc

        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_free_dimension_override_by_name("frames", frames)
        base = _rss_now()
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t0
        after_load = _rss_now()
        res = _time_encoder(lambda f, s=sess: s.run(None, {"input_features": f,
                                                            "feature_length": np.array([f.shape[-1]])}),
                            frames, reps)
        res.update(load_seconds=round(load_s, 1), session_rss_mb=after_load - base,
                   session_rss_after_runs_mb=_rss_now() - base)
        del sess
        gc.collect()
        return res


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


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

    def start(self, phase: str, args: list[str], log: Path, warm: list[str], load_label: str,
              warm_up: bool = False) -> None:
        """Start the worker, then (warm_up) the daemon's own warm-up, whose RSS is reported as the daemon's
        after warm-up, then one untimed window per case in `warm` (the first one's peak RSS is reported as
        load + one window)."""
        self.worker = Worker(MODULE, phase, args, log)
        first = self.call("loaded")
        if warm_up and first is not None and (w := self.call("warm_up")) is not None:
            self.info.update(rss_after_load_mb=first["rss_mb"], rss_after_warm_up_mb=w["rss_mb"],
                             warm_up_seconds=w["seconds"])
            self.memory.append({"name": f"{self.name}: load + Transcriber.warm_up() (as serve starts)",
                                "rss_mb": w["rss_mb"], "peak_rss_mb": w["peak_rss_mb"],
                                "after_load_rss_mb": first["rss_mb"]})
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


def run_sides(args: argparse.Namespace, bundles: dict[str, Path], ckpt: Path, work: Path, params: int,
              notes: list[str]) -> dict[str, Any]:
    """Load each side once and warm it up, then time it: ours (fp32, then INT8 when that bundle is there) and
    transformers alternating run by run when both fit in memory, else one side after the other; then the
    encoder alone, one dynamic session vs a session per bucket."""
    memory: list[dict[str, Any]] = []
    n = str(args.new_tokens)
    cases = ("p2a", "segment", "padded")
    ours = {prec: Side(f"inference, ours (ORT {prec})", notes, memory) for prec in bundles}
    ref = Side("inference, transformers", notes, memory)
    encoder_only: dict[str, Any] = {}

    def run_ours(prec: str, side: Side) -> None:
        side.start("ours", ["--bundle", str(bundles[prec]), "--new-tokens", n], work / f"ours-{prec}.log", list(cases),
                   f"inference, ours (ORT {prec}): load + warm-up + one 35 s window", warm_up=True)

    torch_need = 4 * params / MB * 1.15 + 1500  # fp32 weights + activations and libraries, MB
    first = next(iter(ours), None)
    if first is not None:
        run_ours(first, ours[first])
    avail = meminfo_mb("MemAvailable")
    together = args.mode == "concurrent" or (args.mode == "auto" and avail > torch_need + 1500)
    mode = "alternating, both loaded" if together or first is None else "sequential, one side at a time"
    notes.append(f"sides run {mode}: MemAvailable {avail:.0f} MB with ours loaded, transformers needs "
                 f"≈ {torch_need:.0f} MB")

    def start_reference() -> None:
        ref.start("reference", ["--checkpoint", str(ckpt), "--new-tokens", n], work / "reference.log", ["p2a"],
                  "inference, transformers: from_pretrained + one 35 s generate()")

    ref_first = together or first is None
    if ref_first:
        start_reference()
    for prec, side in ours.items():
        if side.worker is None and prec != first:
            run_ours(prec, side)
        for _ in range(args.reps):
            for which in cases:
                side.time(which)
            if ref_first and prec == first:
                ref.time("p2a")
        for frames in BUCKETS:
            if (r := side.call("encoder", frames=frames, reps=args.reps)) is not None:
                encoder_only.setdefault(f"dynamic {prec}", {})[str(frames)] = r
        if prec == first and args.profile and (prof := side.call("profile")) is not None:
            side.info["ort_profile"] = {k: v for k, v in prof.items() if k not in ("rss_mb", "peak_rss_mb")}
        side.finish("all runs" + (" and the profiling sessions" if prec == first and args.profile else ""))
        if prec == "fp32":  # right after: the alternative, a session per bucket specialised to its frame count
            buckets = Side("encoder, a session per bucket (fp32)", notes, memory)
            buckets.start("buckets", ["--bundle", str(bundles["fp32"])], work / "buckets.log", [], "")
            for frames in BUCKETS:
                if (r := buckets.call("encoder", frames=frames, reps=args.reps)) is not None:
                    encoder_only.setdefault("bucket sessions fp32", {})[str(frames)] = r
            buckets.finish("one session at a time")
    if not ref_first:
        start_reference()
        for _ in range(args.reps):
            ref.time("p2a")
    ref.finish("all runs")
    return {"mode": mode, **{f"ours_{p}": s.results() for p, s in ours.items()}, "reference": ref.results(),
            "encoder_only": encoder_only, "memory": memory}


def comparisons(sides: dict[str, Any], flops: dict[str, Any], peak: dict[str, Any]) -> list[dict[str, Any]]:
    """The P2/P3 ratios from the medians."""
    ref = sides["reference"]
    out = []

    def add(name: str, o: float, r: float, unit: str, ratio: float, goal: float | None) -> None:
        out.append({"name": name, "ours": round(o, 3), "reference": round(r, 3), "unit": unit,
                    "ratio": round(ratio, 3), "goal": goal, "met": None if goal is None else ratio >= goal})

    for prec in ("fp32", "int8"):
        ours = sides.get(f"ours_{prec}", {})
        if "p2a" in ours and "p2a" in ref:
            o, r = ours["p2a"]["median_seconds"], ref["p2a"]["median_seconds"]
            add(f"P2a ({prec}): 35 s window, transformers generate() ÷ ours (ORT), same forced token count", o, r,
                "s", r / o, 2.0)
        if "segment" in ours and "padded" in ours:
            o, r = ours["segment"]["median_seconds"], ours["padded"]["median_seconds"]
            add(f"P2b ({prec}): 5 s segment, ours padded to 3500 frames (cross 438) ÷ ours at its 500 frames "
                "(cross 63)", o, r, "s", r / o, 3.0)
            o, r = ours["segment"]["median_stages_seconds"]["decoder"], ours["padded"]["median_stages_seconds"]["decoder"]
            add(f"P2b ({prec}, decoder stage only): cross 438 ÷ cross 63", o, r, "s", r / o, None)
    ours = sides.get("ours_fp32", {})
    pk = peak.get("peak_gflops")
    if pk and "p2a" in ours:
        gf = (flops["encoder"]["total"] + flops["export_extra"]) / ours["p2a"]["median_stages_seconds"]["encoder"] / 1e9
        add("P3: ours (ORT fp32) encoder GFLOP/s ÷ float32 matmul peak", gf, pk, "GFLOP/s", gf / pk, 0.6)
    if pk and "p2a" in ref:
        gf = flops["encoder"]["total"] / ref["p2a"]["median_stages_seconds"]["encoder"] / 1e9
        add("P3 (reference): transformers encoder GFLOP/s ÷ float32 matmul peak", gf, pk, "GFLOP/s", gf / pk,
            None)
    return out


def decision(enc: dict[str, Any], sides: dict[str, Any]) -> list[dict[str, Any]]:
    """One dynamic encoder session vs a session per bucket: encoder seconds and session memory."""
    dyn, buck = enc.get("dynamic fp32", {}), enc.get("bucket sessions fp32", {})
    rows = []
    for frames in BUCKETS:
        d, b = dyn.get(str(frames)), buck.get(str(frames))
        if d and b:
            rows.append({"name": f"encoder alone, {frames} frames ({frames / 100:g} s): median s",
                         "one dynamic session": d["median_seconds"], "session per bucket": b["median_seconds"],
                         "bucket ÷ dynamic": round(b["median_seconds"] / d["median_seconds"], 3)})
    ours = sides.get("ours_fp32", {})
    sessions = [buck[str(f)]["session_rss_after_runs_mb"] for f in BUCKETS if str(f) in buck]
    if "rss_after_warm_up_mb" in ours and len(sessions) == len(BUCKETS):
        dyn_mb = ours["rss_after_warm_up_mb"] - ours["rss_after_load_mb"]
        rows.append({"name": f"encoder session memory, MB (dynamic: warm-up RSS − load RSS; buckets "
                             f"{', '.join(map(str, BUCKETS))}: each session's RSS after its runs, summed)",
                     "one dynamic session": dyn_mb, "session per bucket": sum(sessions),
                     "bucket ÷ dynamic": round(sum(sessions) / dyn_mb, 3) if dyn_mb > 0 else None})
    return rows


def decision_note(rows: list[dict[str, Any]]) -> str | None:
    """The decision the rows support: one dynamic session unless a session per bucket is ≥ 10 % faster."""
    timing = [r for r in rows if r["name"].startswith("encoder alone")]
    if not timing:
        return None
    ratios = ", ".join(f"{r['name'].split(',')[1].split(':')[0].strip()}: {r['bucket ÷ dynamic']}" for r in timing)
    mem = next((r for r in rows if r["name"].startswith("encoder session memory")), None)
    held = f"; a session per bucket holds {mem['bucket ÷ dynamic']}× the memory" if mem else ""
    if all(r["bucket ÷ dynamic"] >= 0.9 for r in timing):
        return (f"decision: one ONNX encoder session with a dynamic frame axis — a session per bucket is not "
                f"≥ 10 % faster (bucket ÷ dynamic seconds {ratios}){held}")
    return (f"decision input: a session per bucket was ≥ 10 % faster somewhere (bucket ÷ dynamic seconds {ratios})"
            f"{held}: sharing initializers across bucket sessions would be the alternative")


def goals(memory: list[dict[str, Any]], sides: dict[str, Any], weights_mb: dict[str, float]) -> list[dict[str, Any]]:
    """Issue 17's memory goals: export peak RSS ≤ 12 GB; daemon RSS after warm-up ≤ 1.2 × its weights."""
    rows = []
    for m in memory:
        if m["name"].startswith("export") and m.get("peak_rss_mb"):
            gb = m["peak_rss_mb"] * MB / 1e9
            rows.append({"name": f"{m['name']}: peak RSS (GB)", "value": round(gb, 2), "goal": "≤ 12",
                         "met": gb <= 12.0})
    for prec, w in weights_mb.items():
        ours = sides.get(f"ours_{prec}", {})
        if "rss_after_warm_up_mb" in ours and w:
            ratio = ours["rss_after_warm_up_mb"] / w
            rows.append({"name": f"daemon RSS after warm-up ({prec}): {ours['rss_after_warm_up_mb']} MB ÷ its "
                                 f"weights {w:.0f} MB", "value": round(ratio, 3), "goal": "≤ 1.2",
                         "met": ratio <= 1.2})
    return rows


def extrapolate(sides: dict[str, Any], flops: dict[str, Any], cfg_flops_full: dict[str, Any]) -> dict[str, Any]:
    """Times at 48 encoder layers from a smaller run: each encoder time scaled by the analytic FLOP ratio
    (the same achieved FLOP/s); features and decoder unchanged (they do not depend on encoder layers)."""
    scale = cfg_flops_full["total"] / flops["encoder"]["total"]
    seg_scale = cfg_flops_full["segment_total"] / flops["encoder_segment"]["total"]
    out: dict[str, Any] = {"encoder_time_scale_35s": round(scale, 3), "encoder_time_scale_5s": round(seg_scale, 3)}
    for side, key, s in (("ours", "p2a", scale), ("reference", "p2a", scale), ("ours", "segment", seg_scale),
                         ("ours", "padded", scale)):
        st = sides.get("ours_fp32" if side == "ours" else side, {}).get(key, {}).get("median_stages_seconds")
        if st:
            out[f"{side}_{key}_seconds"] = round(sum(st.values()) - st["encoder"] + s * st["encoder"], 2)
    if "ours_p2a_seconds" in out and "reference_p2a_seconds" in out:
        out["P2a_ratio"] = round(out["reference_p2a_seconds"] / out["ours_p2a_seconds"], 3)
    if "ours_segment_seconds" in out and "ours_padded_seconds" in out:
        out["P2b_ratio"] = round(out["ours_padded_seconds"] / out["ours_segment_seconds"], 3)
    return out


def bundle_files(bundle: Path) -> dict[str, Any]:
    """Sizes of the bundle's files, and files in it that the manifest does not list (left-overs)."""
    listed = set(json.loads((bundle / "manifest.json").read_text())["files"])
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in bundle.rglob("*") if p.is_file()}
    extra = {f: s for f, s in files.items() if f not in listed and f != "manifest.json"}
    return {"listed_mb": {f: round(files[f] / MB, 1) for f in sorted(listed)},
            "unlisted_count": len(extra), "unlisted_mb": round(sum(extra.values()) / MB, 1),
            "unlisted_examples": sorted(extra)[:5]}


def onnx_weights_mb(bundle: Path) -> float:
    """The ONNX model files of a bundle (graphs and their external weights), MB: what the daemon loads."""
    return sum(p.stat().st_size for p in (bundle / "onnx").iterdir() if p.is_file()) / MB


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / f"enc{args.encoder_layers}-dec{args.decoder_layers}"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint"
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

    bundles: dict[str, Path] = {}
    for prec in ("fp32", "int8") if args.int8 else ("fp32",):
        bundle = work / ("bundle" if prec == "fp32" else f"bundle-{prec}")
        key = "export" if prec == "fp32" else f"export_{prec}"
        if args.reuse and (bundle / "manifest.json").exists():
            steps[key] = {"reused": str(bundle)}
        else:
            shutil.rmtree(bundle, ignore_errors=True)
            cmd = [sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(bundle), "--backends",
                   "onnx", *(["--onnx-precision", prec] if prec != "fp32" else [])]
            steps[key] = measure(cmd, work / f"{key}.log", args.export_timeout)
            memory.append({"name": f"export (python -m exporter --backends onnx{' --onnx-precision ' + prec if prec != 'fp32' else ''}"
                                   "; weights streamed to disk)", "peak_rss_mb": steps[key]["peak_rss_mb"],
                           "seconds": steps[key]["seconds"]})
            if steps[key]["rc"] != 0:
                notes.append(f"{key} failed (exit {steps[key]['rc']}); see steps.{key}.log_tail")
        print(f"[full_shape] {key}: {steps[key]}", file=sys.stderr)
        if (bundle / "manifest.json").exists():
            bundles[prec] = bundle
            steps[f"bundle_files_{prec}"] = bundle_files(bundle)
    cfg = full_config(args.encoder_layers, args.decoder_layers)
    flops: dict[str, Any] = {"encoder": encoder_flops(cfg.encoder_config, BUCKETS[-1]),
                             "encoder_segment": encoder_flops(cfg.encoder_config, int(SEGMENT_S * 100)),
                             "export_extra": export_extra_flops(cfg, -(-BUCKETS[-1] // 8))}
    if "fp32" in bundles:  # the dynamic graph counted at 3500 frames (its linear_pos runs: nothing is folded)
        flops["onnx_graph_encoder_3500"] = graph_flops(bundles["fp32"] / "onnx" / "encoder.onnx", BUCKETS[-1])
    sides = run_sides(args, bundles, ckpt, work, steps["checkpoint"]["params"], notes)
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
        "goals": goals(memory, sides, {p: onnx_weights_mb(b) for p, b in bundles.items()}),
        "encoder_dynamic_vs_buckets": (rows := decision(sides["encoder_only"], sides)),
        "memory": memory,
        "stages": sides,
        "flops": flops,
        "matmul_peak": {k: v for k, v in peak.items() if k not in ("log_tail", "command")},
        "steps": steps,
        "notes": notes,
    }
    if (text := decision_note(rows)) is not None:
        notes.append(text)
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
    elif args.phase == "buckets":
        serve(Buckets(args.bundle))
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
    ap.add_argument("--int8", action="store_true",
                    help="also export and time an INT8 bundle (--onnx-precision int8), side by side with fp32")
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
