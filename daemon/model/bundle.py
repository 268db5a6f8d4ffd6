"""The model bundle: a folder with manifest.json, model files, tokenizer.model and the mel filterbank/window.

The manifest declares everything the runtime needs (audio parameters, buckets, tensor names/shapes/dtypes per
backend, token ids, prompt template, generation limits, checksums); `load_bundle` validates it and fails with
one line naming what is wrong. A folder of FluidInference's published Core ML files has no manifest:
daemon.model.fluidaudio.load_model reads either kind, deriving what such a manifest would say. It hashes
nothing: checksums are verified per backend by daemon.model.checksums.verify_files. The exporter writes the
manifest (exporter/manifest.py); nothing here is hard-coded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import BundleError
from daemon.model.features import FeatureParams

FORMAT = "cohere-transcribe-bundle"
FORMAT_VERSION = 3  # 3: dynamic axes (-1): one ONNX encoder for any window, the decoder's cross axis
# 2: a graph may name a function of a multifunction package (the Core ML encoder); 1: a package per bucket
READS_VERSIONS = (1, 2, 3)
ANY = -1  # a dimension declared -1 takes any size
CONTRACT = "cohere-cache-external-v1"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the manifest declares it."""

    name: str
    shape: tuple[int, ...]  # ANY (-1): a dynamic axis
    dtype: str  # numpy dtype name: float32, float16, int32, int64


@dataclass(frozen=True)
class GraphSpec:
    """One model file of a backend with its declared inputs and outputs.

    Several graphs may share one file: the Core ML encoder is one multifunction .mlpackage with a function per
    frame bucket, named by `function` (None: the file's only or default function).
    """

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    function: str | None = None
    sha256: str | None = None  # the file's checksum as the manifest lists it (None: not listed)


@dataclass(frozen=True)
class BackendSpec:
    """The files of one backend: an encoder per frame bucket, one decoder step, and optionally the prompt
    prefill (the decoder with a token axis: the prompt in one call; None in bundles exported before it)."""

    precision: str
    encoders: dict[int, GraphSpec]  # input frames -> encoder; one dynamic encoder: the full window -> it
    decoder: GraphSpec
    prefill: GraphSpec | None = None

    @property
    def dynamic_encoder(self) -> GraphSpec | None:
        """The encoder that takes any frame count up to the full window (its frame axis is -1), or None when
        the backend has an encoder per bucket."""
        if not self.encoders:
            raise ValueError("a backend has no encoder")
        (graph, *more) = self.encoders.values()
        dynamic = not more and any(t.shape[-1] == ANY for t in graph.inputs if t.name == "input_features")
        return graph if dynamic else None


@dataclass(frozen=True)
class Bundle:
    """A validated bundle."""

    root: Path
    manifest: dict[str, Any]
    tokenizer_path: Path
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
    def window_frames(self) -> int:
        """Feature frames of the longest window the encoder takes (the largest bucket)."""
        return self.buckets[-1]

    @property
    def window_samples(self) -> int:
        """Samples of the longest window (max_window_seconds); the live VAD closes segments at this length."""
        return round(self.max_window_seconds * self.features.sample_rate)

    @property
    def shared_files(self) -> tuple[str, ...]:
        """Bundle-relative files every backend uses: tokenizer, mel filterbank, window (a FluidInference folder
        has no filterbank files: it is computed)."""
        a = self.manifest["audio"]
        return tuple(str(f) for f in (self.manifest["tokenizer"], a["mel_filters"], a["window"]) if f is not None)

    @property
    def contract(self) -> str:
        """The decoder contract: ours (cohere-cache-external-v1), or FluidAudio's (fluidaudio-v1, fluidaudio-v2)."""
        return str(self.manifest.get("decoder_contract", CONTRACT))


def window_frames(max_window_seconds: float, sample_rate: int, hop_length: int) -> int:
    """Feature frames of max_window_seconds of audio (one frame per full hop, as features.log_mel counts)."""
    return round(max_window_seconds * sample_rate) // hop_length


def load_bundle(root: str | Path) -> Bundle:
    """Read and validate a bundle folder: the manifest's fields and that every file it lists exists.

    Hashes nothing (fast); see daemon.model.checksums.verify_files for the checksums.

    Raises:
        BundleError: naming the missing file or the malformed field.
    """
    root = Path(root)
    mpath = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"model bundle {root} is not a folder")
    if not mpath.is_file():
        raise BundleError(f"model bundle {root} has no manifest.json (nor FluidInference Core ML files: "
                          "cohere_encoder.mlmodelc or .mlpackage)")
    try:
        text = mpath.read_text()
    except OSError as e:
        raise BundleError(f"cannot read {mpath}: {e.strerror or e}") from e
    try:
        m = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not a {FORMAT} manifest")
    if m.get("format_version") not in READS_VERSIONS:
        raise BundleError(f"{mpath}: format_version {m.get('format_version')!r}, this daemon reads "
                          f"{', '.join(map(str, READS_VERSIONS[:-1]))} and {READS_VERSIONS[-1]}; re-export the bundle or update the daemon")
    if m.get("decoder_contract") != CONTRACT:
        raise BundleError(f"{mpath}: decoder contract {m.get('decoder_contract')!r} is not supported ({CONTRACT})")
    try:
        _check_files(root, m)
        return _check_shapes(_parse(root, m))
    except KeyError as e:
        raise BundleError(f"{mpath}: missing field {e}") from e
    except (TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: malformed field: {e}") from e


def _check_files(root: Path, m: dict[str, Any]) -> None:
    """Every file the manifest lists, and the tokenizer, exist."""
    files: dict[str, str] = m["files"]
    if not isinstance(files, dict):
        raise TypeError("files must map paths to SHA-256 digests")
    graphs = [g["file"] for b in m["backends"].values()
              for g in [*b["encoders"].values(), b["decoder"], *([b["prefill"]] if "prefill" in b else [])]]
    for rel in [*files, m["tokenizer"], m["audio"]["mel_filters"], m["audio"]["window"], *graphs]:
        _check_inside(root, rel)
        if not (root / rel).exists():
            raise BundleError(f"model bundle {root} is missing {rel}")


def _check_inside(root: Path, rel: object) -> None:
    """A path the manifest names must stay inside the bundle (no absolute paths, no .. or links out of it)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise BundleError(f"model bundle {root}: {rel!r} is not a path inside the bundle")
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        raise BundleError(f"model bundle {root}: {rel!r} leads out of the bundle")


def _check_shapes(b: Bundle) -> Bundle:
    """Cross-check what the manifest states twice: the largest bucket holds the full window, and the decoder's
    cross length is the encoder's output for it."""
    mpath = b.root / "manifest.json"
    p = b.features
    need = window_frames(b.max_window_seconds, p.sample_rate, p.hop_length)
    if b.buckets[-1] < need:
        raise BundleError(f"{mpath}: the largest encoder bucket ({b.buckets[-1]} frames) is shorter than the "
                          f"{b.max_window_seconds:g} s window ({need} frames); re-export with a {need}-frame bucket")
    cross = encoder_frames(b.buckets[-1], b.subsampling_stages)
    if b.cross_frames != cross:
        raise BundleError(f"{mpath}: decoder cross_frames is {b.cross_frames}, but the largest bucket "
                          f"({b.buckets[-1]} frames) gives {cross} encoder frames")
    return b


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
    backends = {name: _backend(root, spec, m["files"]) for name, spec in m["backends"].items()}
    buckets = tuple(sorted(int(b) for b in m["encoder"]["buckets"]))
    if not buckets:
        raise ValueError("the encoder has no frame buckets")
    for name, b in backends.items():
        if b.dynamic_encoder is not None:
            if set(b.encoders) != {buckets[-1]}:
                raise ValueError(f"backend {name}'s dynamic encoder is declared for {sorted(b.encoders)} frames, "
                                 f"the full window is {buckets[-1]}")
        elif set(b.encoders) != set(buckets):
            raise ValueError(f"backend {name} has encoders for {sorted(b.encoders)}, buckets are {list(buckets)}")
    return Bundle(
        root=root,
        manifest=m,
        tokenizer_path=root / str(m["tokenizer"]),
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


def _graph(root: Path, g: dict[str, Any], files: dict[str, str]) -> GraphSpec:
    def tensors(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], tuple(int(d) for d in t["shape"]), str(t["dtype"])) for t in items)

    function = g.get("function")
    if function is not None and not isinstance(function, str):
        raise TypeError(f"the function of {g['file']} must be a name, not {function!r}")
    rel = str(g["file"])
    return GraphSpec(root / rel, tensors(g["inputs"]), tensors(g["outputs"]), function, files.get(rel))


def _backend(root: Path, b: dict[str, Any], files: dict[str, str]) -> BackendSpec:
    return BackendSpec(
        precision=str(b["precision"]),
        encoders={int(f): _graph(root, g, files) for f, g in b["encoders"].items()},
        decoder=_graph(root, b["decoder"], files),
        prefill=_graph(root, b["prefill"], files) if "prefill" in b else None,
    )


def encoder_frames(n_frames: int, stages: int) -> int:
    """Encoder output frames for n_frames input frames: each stride-2 conv maps L to ceil(L/2)."""
    for _ in range(stages):
        n_frames = -(-n_frames // 2)
    return n_frames
