"""The model bundle: a folder with manifest.json, model files, tokenizer.model and the mel filterbank/window.

The manifest declares everything the runtime needs (audio parameters, buckets, tensor names/shapes/dtypes per
backend, token ids, prompt template, generation limits, checksums); `load_bundle` validates it and fails with
one line naming what is wrong. The exporter writes it (exporter/manifest.py); nothing here is hard-coded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import BundleError
from daemon.model.features import FeatureParams

FORMAT = "cohere-transcribe-bundle"
FORMAT_VERSION = 1
CONTRACT = "cohere-cache-external-v1"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the manifest declares it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, float16, int32, int64


@dataclass(frozen=True)
class GraphSpec:
    """One model file of a backend with its declared inputs and outputs."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class BackendSpec:
    """The files of one backend: an encoder per frame bucket and one decoder step."""

    precision: str
    encoders: dict[int, GraphSpec]  # input frames -> encoder
    decoder: GraphSpec


@dataclass(frozen=True)
class Bundle:
    """A validated bundle."""

    root: Path
    manifest: dict[str, Any]
    features: FeatureParams
    buckets: tuple[int, ...]  # encoder input frame counts, ascending; the last is the full window
    cross_frames: int  # the decoder's fixed cross-attention length (encoder frames of the full window)
    cache_capacity: int  # self-attention cache positions
    n_layers: int
    n_heads: int
    head_dim: int
    vocab_size: int
    subsampling_stages: int  # stride-2 convolutions in the encoder front end
    mask_value: float  # additive mask for masked positions (finite: FP16 must not see -inf)
    eos_id: int
    languages: dict[str, int]  # language code -> id of <|xx|>
    special: dict[str, int]  # control piece -> id
    prompt_template: tuple[str, ...]
    punctuation_pieces: dict[str, str]  # "on"/"off" -> piece
    max_new_tokens: int
    eos_logit_bias: float
    max_window_seconds: float
    split_search_seconds: float
    split_window_samples: int
    backends: dict[str, BackendSpec]

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["tokenizer"]

    @property
    def window_frames(self) -> int:
        return self.buckets[-1]


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (relative path + content, in sorted order)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    else:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_bundle(root: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read and validate a bundle folder.

    Raises:
        BundleError: naming the missing file, the malformed field, or the file whose checksum differs.
    """
    root = Path(root)
    mpath = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"model bundle {root} is not a folder")
    if not mpath.is_file():
        raise BundleError(f"model bundle {root} has no manifest.json")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a {FORMAT} manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {m.get('format_version')!r}, this daemon reads {FORMAT_VERSION}")
    if m.get("decoder_contract") != CONTRACT:
        raise BundleError(f"{mpath}: decoder contract {m.get('decoder_contract')!r} is not supported ({CONTRACT})")
    try:
        _check_files(root, m, verify_checksums)
        return _parse(root, m)
    except KeyError as e:
        raise BundleError(f"{mpath}: missing field {e}") from e
    except (TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: malformed field: {e}") from e


def _check_files(root: Path, m: dict[str, Any], verify: bool) -> None:
    files: dict[str, str] = m["files"]
    for rel, digest in files.items():
        p = root / rel
        if not p.exists():
            raise BundleError(f"model bundle {root} is missing {rel}")
        if verify and sha256_of(p) != digest:
            raise BundleError(f"checksum mismatch for {root / rel}: the file was changed or damaged")


def _parse(root: Path, m: dict[str, Any]) -> Bundle:
    a, mod, tok, gen = m["audio"], m["model"], m["tokens"], m["generation"]
    params = FeatureParams(
        sample_rate=int(a["sample_rate"]),
        n_fft=int(a["n_fft"]),
        win_length=int(a["win_length"]),
        hop_length=int(a["hop_length"]),
        n_mels=int(a["n_mels"]),
        preemphasis=float(a["preemphasis"]),
        dither=float(a["dither"]),
        log_zero_guard=float(a["log_zero_guard"]),
        cmvn_eps=float(a["cmvn_eps"]),
        mel_filters=np.load(root / a["mel_filters"]).astype(np.float32),
        window=np.load(root / a["window"]).astype(np.float32),
    )
    backends = {name: _backend(root, spec) for name, spec in m["backends"].items()}
    buckets = tuple(sorted(int(b) for b in m["encoder"]["buckets"]))
    for name, b in backends.items():
        if set(b.encoders) != set(buckets):
            raise ValueError(f"backend {name} has encoders for {sorted(b.encoders)}, buckets are {list(buckets)}")
    return Bundle(
        root=root,
        manifest=m,
        features=params,
        buckets=buckets,
        cross_frames=int(m["decoder"]["cross_frames"]),
        cache_capacity=int(m["decoder"]["cache_capacity"]),
        n_layers=int(mod["decoder_layers"]),
        n_heads=int(mod["decoder_heads"]),
        head_dim=int(mod["head_dim"]),
        vocab_size=int(mod["vocab_size"]),
        subsampling_stages=int(mod["subsampling_stages"]),
        mask_value=float(m["decoder"]["mask_value"]),
        eos_id=int(tok["eos"]),
        languages={str(k): int(v) for k, v in tok["languages"].items()},
        special={str(k): int(v) for k, v in tok["special"].items()},
        prompt_template=tuple(str(p) for p in m["prompt"]["template"]),
        punctuation_pieces={str(k): str(v) for k, v in m["prompt"]["punctuation"].items()},
        max_new_tokens=int(gen["max_new_tokens"]),
        eos_logit_bias=float(gen.get("eos_logit_bias", 0.0)),
        max_window_seconds=float(a["max_window_seconds"]),
        split_search_seconds=float(a["split_search_seconds"]),
        split_window_samples=int(a["split_window_samples"]),
        backends=backends,
    )


def _graph(root: Path, g: dict[str, Any]) -> GraphSpec:
    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], tuple(int(d) for d in t["shape"]), str(t["dtype"])) for t in items)

    return GraphSpec(root / g["file"], tensors(g["inputs"]), tensors(g["outputs"]))


def _backend(root: Path, b: dict[str, Any]) -> BackendSpec:
    return BackendSpec(
        precision=str(b["precision"]),
        encoders={int(f): _graph(root, g) for f, g in b["encoders"].items()},
        decoder=_graph(root, b["decoder"]),
    )


def encoder_frames(n_frames: int, stages: int) -> int:
    """Encoder output frames for n_frames input frames: each stride-2 conv maps L to ceil(L/2)."""
    for _ in range(stages):
        n_frames = -(-n_frames // 2)
    return n_frames
