"""A folder of FluidInference's Core ML files (FluidAudio's contract) read as a Bundle: what its manifest would say.

`--model DIR` takes such a folder as downloaded or with the files side by side:
- FluidInference/cohere-transcribe-03-2026-coreml: DIR/q8/cohere_encoder.mlmodelc,
  DIR/q8/cohere_decoder_cache_external_v2.mlmodelc (and the v1 decoder), DIR/vocab.json at the root
  (DIR may also be the q8 folder itself: the tokenizer is looked for beside the models, then above them);
- FluidInference/cohere-transcribe-cache-external-coreml: cohere_encoder.mlpackage,
  cohere_decoder_cache_external.mlpackage and tokenizer.model side by side (also what
  `python -m exporter --contract fluidaudio-v1|fluidaudio-v2` writes).
A compiled .mlmodelc is preferred to an .mlpackage of the same name (Core ML on a Mac loads it directly), the
v2 decoder to v1 (FluidAudio's default: a static graph), tokenizer.model to vocab.json.

The files' tensors are read from the files themselves (a compiled model's metadata.json, a package's spec through
coremltools) and checked against the published contract (../shared/reference/coreml-prior-art.md §2): encoder
input_features (1, n_mels, 3500) f32 + feature_length (1,) i32 → hidden_states (1, 438, d); decoder input_id,
position_id (1, 1) i32, encoder_hidden_states (1, 438, d), cross_attention_mask (1, 1, 1, 438),
attention_mask (v1: (1, 1, 1, 1…C), v2: (1, 1, 1, C)), k_cache_i/v_cache_i (1, H, C, D) → logits (1, V),
k_cache_i_out/v_cache_i_out. The cache of C = 108 slots holds the 10-token prompt, so a window decodes at most
C − 10 = 98 new tokens. Audio parameters and the mel filterbank: daemon.model.fluidaudio_features.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import BackendError, BundleError
from daemon.model.bundle import (
    BackendSpec,
    Bundle,
    GraphSpec,
    TensorSpec,
    encoder_frames,
    load_bundle,
    window_frames,
)
from daemon.model.fluidaudio_features import (
    HOP_LENGTH,
    MAX_WINDOW_SECONDS,
    SAMPLE_RATE,
    audio_manifest,
    feature_params,
)

log = logging.getLogger(__name__)

FORMAT = "fluidinference-coreml"
ENCODER = "cohere_encoder"
DECODERS = (("fluidaudio-v2", "cohere_decoder_cache_external_v2"), ("fluidaudio-v1", "cohere_decoder_cache_external"))
CONTRACTS = tuple(c for c, _ in DECODERS)
SUFFIXES = (".mlmodelc", ".mlpackage")  # preferred first
TOKENIZERS = ("tokenizer.model", "vocab.json")  # preferred first
SUBSAMPLING_STAGES = 3  # ×8: 3500 feature frames → 438 encoder frames
MASK_VALUE = -1e4  # additive, as FluidAudio's masks (finite in FP16)
PROMPT_TEMPLATE = ("\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "<|{language}|>",
                   "<|{language}|>", "{punctuation}", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>")
PUNCTUATION = {"on": "<|pnc|>", "off": "<|nopnc|>"}
CONTROL_PIECES = ("<|nospeech|>", "<pad>", "<|endoftext|>", "<|startoftranscript|>", "<|pnc|>", "<|nopnc|>",
                  "<|startofcontext|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>",
                  "<|nodiarize|>", "<|emo:undefined|>", "\u2581")
LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "el", "ar", "vi", "ja", "zh", "ko")  # the 14 trained
# The published tokenizer's ids (reference/model.md §6), checked when a 16384-piece vocabulary is loaded.
PUBLISHED_IDS = {"<|endoftext|>": 3, "<|startoftranscript|>": 4, "<|pnc|>": 5, "<|nopnc|>": 6, "\u2581": 13764,
                 "<|en|>": 62, "<|fr|>": 69, "<|de|>": 76, "<|es|>": 169, "<|zh|>": 50, "<|ja|>": 98}
_DTYPES = {"Float32": "float32", "Float16": "float16", "Int32": "int32", "Double": "float64"}
_SPEC_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}  # ArrayFeatureType
_SPEC_MACOS = {6: "macOS12", 7: "macOS13", 8: "macOS14", 9: "macOS15", 10: "macOS26"}  # specificationVersion
ANY = -1  # a flexible dimension (v1's attention_mask length)


@dataclass(frozen=True)
class Layout:
    """Where a FluidInference folder's files are."""

    root: Path  # the folder given as --model
    encoder: Path
    decoder: Path
    contract: str  # fluidaudio-v1 or fluidaudio-v2
    tokenizer: Path


@dataclass(frozen=True)
class Described:
    """A Core ML file's inputs and outputs as it declares them, and the macOS it needs (None: not stated)."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    target: str | None
    precision: str


def model_folders(root: Path) -> list[Path]:
    """The folders that hold FluidInference model files: `root` itself, else its subfolders that do."""
    def has_models(d: Path) -> bool:
        return any((d / f"{stem}{sfx}").exists() for stem in (ENCODER, *(s for _, s in DECODERS)) for sfx in SUFFIXES)

    if has_models(root):
        return [root]
    try:
        return sorted(d for d in root.iterdir() if d.is_dir() and has_models(d))
    except OSError:
        return []


def is_fluid_folder(root: Path) -> bool:
    """Whether `root` holds FluidInference Core ML files (side by side or one folder down)."""
    return root.is_dir() and bool(model_folders(root))


def _pick(folder: Path, stem: str) -> Path | None:
    for sfx in SUFFIXES:
        if (folder / f"{stem}{sfx}").exists():
            return folder / f"{stem}{sfx}"
    return None


def find_layout(root: Path) -> Layout:
    """The files of a FluidInference folder.

    Raises:
        BundleError: one line naming what is missing or ambiguous.
    """
    folders = model_folders(root)
    if not folders:
        raise BundleError(f"{root} holds no FluidInference Core ML files ({ENCODER}.mlmodelc or .mlpackage)")
    if len(folders) > 1:
        names = ", ".join(d.name for d in folders)
        raise BundleError(f"{root} holds Core ML files in several folders ({names}): pass one of them as --model")
    models = folders[0]
    encoder = _pick(models, ENCODER)
    if encoder is None:
        raise BundleError(f"FluidInference folder {models} has no {ENCODER}.mlmodelc or {ENCODER}.mlpackage")
    found = [(contract, path) for contract, stem in DECODERS if (path := _pick(models, stem)) is not None]
    if not found:
        raise BundleError(f"FluidInference folder {models} has no decoder ({DECODERS[0][1]} or {DECODERS[1][1]}, "
                          ".mlmodelc or .mlpackage)")
    contract, decoder = found[0]
    places = list(dict.fromkeys([models, root, models.parent]))
    for name in TOKENIZERS:
        for place in places:
            if (place / name).is_file():
                return Layout(root, encoder, decoder, contract, place / name)
    raise BundleError(f"FluidInference folder {root} has no tokenizer.model or vocab.json (looked in "
                      f"{', '.join(str(p) for p in places)})")


def describe(path: Path) -> Described:
    """A Core ML file's declared tensors: .mlmodelc from its metadata.json, .mlpackage from its spec.

    Raises:
        BundleError: not a readable Core ML model.
    """
    if not path.is_dir():
        raise BundleError(f"{path} is not a Core ML model (a {path.suffix} is a folder)")
    if path.suffix == ".mlmodelc":
        return _describe_compiled(path)
    if not (path / "Manifest.json").is_file():
        raise BundleError(f"{path} is not a Core ML package (no Manifest.json)")
    from daemon.model.backends.coreml_reference import package_spec

    try:
        spec = package_spec(path)
    except BackendError as e:
        raise BundleError(str(e)) from e
    return Described(_spec_tensors(spec.description.input), _spec_tensors(spec.description.output),
                     _SPEC_MACOS.get(spec.specificationVersion), "as stored in the package")


def _spec_tensors(features: Any) -> dict[str, TensorSpec]:
    out = {}
    for f in features:
        a = f.type.multiArrayType
        shape = [int(d) for d in a.shape]
        if a.WhichOneof("ShapeFlexibility") == "shapeRange":
            shape = [d if r.lowerBound == r.upperBound else ANY for d, r in zip(shape, a.shapeRange.sizeRanges,
                                                                               strict=True)]
        elif a.WhichOneof("ShapeFlexibility") is not None:
            shape = [ANY] * len(shape)
        out[f.name] = TensorSpec(f.name, tuple(shape), _SPEC_DTYPES.get(a.dataType, str(a.dataType)))
    return out


def _describe_compiled(path: Path) -> Described:
    meta_path = path / "metadata.json"
    if not (path / "coremldata.bin").is_file():
        raise BundleError(f"{path} is not a compiled Core ML model (no coremldata.bin)")
    try:
        meta = json.loads(meta_path.read_text())[0]
        inputs = _schema(meta["inputSchema"])
        outputs = _schema(meta["outputSchema"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise BundleError(f"{meta_path}: cannot read the model's inputs and outputs ({e})") from e
    macos = (meta.get("availability") or {}).get("macOS")
    return Described(inputs, outputs, f"macOS{macos}" if macos else None, str(meta.get("storagePrecision", "?")))


def _schema(rows: list[dict[str, Any]]) -> dict[str, TensorSpec]:
    out = {}
    for row in rows:
        shape = [int(d) for d in json.loads(row["shape"])]
        if row.get("hasShapeFlexibility") == "1":
            ranges = json.loads(row.get("shapeRange") or "[]")
            shape = ([d if lo == hi else ANY for d, (lo, hi) in zip(shape, ranges, strict=True)]
                     if len(ranges) == len(shape) else [ANY] * len(shape))
        out[row["name"]] = TensorSpec(row["name"], tuple(shape), _DTYPES.get(row["dataType"], row["dataType"]))
    return out


def _need(graph: Path, tensors: dict[str, TensorSpec], name: str, shape: tuple[int, ...], what: str) -> TensorSpec:
    """The tensor `name` of a file, with `shape` (ANY in `shape`: any size there)."""
    if name not in tensors:
        raise BundleError(f"{graph.name} has no {what} {name!r}: not FluidAudio's contract (it has: "
                          f"{', '.join(sorted(tensors))})")
    t = tensors[name]
    if len(t.shape) != len(shape) or any(s != ANY and d != s for d, s in zip(t.shape, shape, strict=True)):
        want = "(" + ", ".join("any" if s == ANY else str(s) for s in shape) + ")"
        raise BundleError(f"{graph.name}: {what} {name} has shape {t.shape}, FluidAudio's contract needs {want}")
    return t


def check_contract(layout: Layout, enc: Described, dec: Described) -> dict[str, int]:
    """The model's dimensions, read from the files and checked against the published contract.

    Raises:
        BundleError: the first tensor that is missing or has the wrong shape, naming it.
    """
    frames = window_frames(MAX_WINDOW_SECONDS, SAMPLE_RATE, HOP_LENGTH)  # 3500
    cross = encoder_frames(frames, SUBSAMPLING_STAGES)  # 438
    e, d = layout.encoder, layout.decoder
    n_mels = _need(e, enc.inputs, "input_features", (1, ANY, frames), "input").shape[1]
    _need(e, enc.inputs, "feature_length", (1,), "input")
    width = _need(e, enc.outputs, "hidden_states", (1, cross, ANY), "output").shape[2]
    layers = sum(1 for n in dec.inputs if re.fullmatch(r"k_cache_\d+", n))
    if layers == 0:
        raise BundleError(f"{d.name} has no input 'k_cache_0': not FluidAudio's cache-external decoder")
    _, heads, capacity, head_dim = _need(d, dec.inputs, "k_cache_0", (1, ANY, ANY, ANY), "input").shape
    for name, shape in [("input_id", (1, 1)), ("position_id", (1, 1)), ("encoder_hidden_states", (1, cross, width)),
                        ("cross_attention_mask", (1, 1, 1, cross)),
                        ("attention_mask", (1, 1, 1, ANY if layout.contract == "fluidaudio-v1" else capacity)),
                        *[(f"{kv}_cache_{i}", (1, heads, capacity, head_dim)) for kv in "kv" for i in range(layers)]]:
        _need(d, dec.inputs, name, shape, "input")
    if layout.contract == "fluidaudio-v1" and dec.inputs["attention_mask"].shape[-1] != ANY:
        raise BundleError(f"{d.name}: the v1 attention_mask must have a flexible length (its length is the position)")
    vocab = _need(d, dec.outputs, "logits", (1, ANY), "output").shape[1]
    for kv in "kv":
        for i in range(layers):
            _need(d, dec.outputs, f"{kv}_cache_{i}_out", (1, heads, capacity, head_dim), "output")
    return {"n_mels": n_mels, "d_model": width, "layers": layers, "heads": heads, "capacity": capacity,
            "head_dim": head_dim, "vocab": vocab, "frames": frames, "cross": cross}


def _token_ids(layout: Layout, vocab: int) -> tuple[dict[str, int], dict[str, int]]:
    """(control piece → id, language → id) read from the tokenizer by piece name."""
    from daemon.model.fluidaudio_vocab import open_tokenizer

    tok = open_tokenizer(layout.tokenizer)
    if tok.vocab_size != vocab:
        raise BundleError(f"{layout.tokenizer} has {tok.vocab_size} pieces, the decoder's logits {vocab}")
    needed = [p for p in PROMPT_TEMPLATE if "{" not in p] + [*PUNCTUATION.values(), "<|endoftext|>"]
    missing = [p for p in needed if not tok.has_piece(p)]
    if missing:
        raise BundleError(f"{layout.tokenizer} lacks the control pieces {missing}")
    special = {p: tok.piece_id(p) for p in CONTROL_PIECES if tok.has_piece(p)}
    languages = {lang: tok.piece_id(f"<|{lang}|>") for lang in LANGUAGES if tok.has_piece(f"<|{lang}|>")}
    if vocab == 16384:
        got = {**special, **{f"<|{k}|>": v for k, v in languages.items()}}
        wrong = {p: (got.get(p), i) for p, i in PUBLISHED_IDS.items() if got.get(p) != i}
        if wrong:
            raise BundleError(f"{layout.tokenizer}: token ids differ from Cohere Transcribe's: {wrong} (got, expected)")
    return special, languages


def _rel(layout: Layout, path: Path) -> str:
    try:
        return str(path.relative_to(layout.root))
    except ValueError:  # the tokenizer above a q8 folder given as --model
        return str(path.resolve())


def _graph(path: Path, described: Described, order: list[str], out_order: list[str]) -> GraphSpec:
    return GraphSpec(path, tuple(described.inputs[n] for n in order), tuple(described.outputs[n] for n in out_order))


def load_model(root: str | Path) -> Bundle:
    """What `--model DIR` names: a bundle (manifest.json), or a folder of FluidInference's Core ML files.

    Raises:
        BundleError: one line naming what is wrong with either.
    """
    root = Path(root)
    if not (root / "manifest.json").is_file() and is_fluid_folder(root):
        return load_fluid_folder(root)
    return load_bundle(root)


def load_fluid_folder(root: str | Path) -> Bundle:
    """A FluidInference folder as a Bundle (its `manifest` is what a manifest.json would say; no checksums).

    Raises:
        BundleError: naming the missing file or the tensor that breaks the contract.
    """
    layout = find_layout(Path(root))
    enc, dec = describe(layout.encoder), describe(layout.decoder)
    dims = check_contract(layout, enc, dec)
    special, languages = _token_ids(layout, dims["vocab"])
    prompt_len = len(PROMPT_TEMPLATE)
    if dims["capacity"] <= prompt_len:
        raise BundleError(f"{layout.decoder.name}: a cache of {dims['capacity']} slots leaves no room after the "
                          f"{prompt_len}-token prompt")
    layers = dims["layers"]
    caches = [f"{kv}_cache_{i}" for kv in "kv" for i in range(layers)]
    encoder = _graph(layout.encoder, enc, ["input_features", "feature_length"], ["hidden_states"])
    decoder = _graph(layout.decoder, dec,
                     ["input_id", "position_id", "encoder_hidden_states", "cross_attention_mask", "attention_mask",
                      *caches], ["logits", *(f"{c}_out" for c in caches)])
    targets = sorted(t for t in (enc.target, dec.target) if t)
    target = max(targets, key=lambda t: [int(p) for p in re.findall(r"\d+", t)]) if targets else None
    precision = f"encoder {enc.precision}, decoder {dec.precision}"
    spec = BackendSpec(precision, {dims["frames"]: encoder}, decoder)
    manifest = _manifest(layout, dims, special, languages, target, precision, encoder, decoder)
    return Bundle(
        root=layout.root, manifest=manifest, tokenizer_path=layout.tokenizer,
        features=feature_params(dims["n_mels"]), buckets=(dims["frames"],), cross_frames=dims["cross"],
        cache_capacity=dims["capacity"], n_layers=layers, n_heads=dims["heads"], head_dim=dims["head_dim"],
        vocab_size=dims["vocab"], subsampling_stages=SUBSAMPLING_STAGES, mask_value=MASK_VALUE,
        eos_id=special["<|endoftext|>"], languages=languages, special=special, prompt_template=PROMPT_TEMPLATE,
        punctuation_pieces=dict(PUNCTUATION), max_new_tokens=dims["capacity"] - prompt_len, eos_logit_bias=0.0,
        max_window_seconds=MAX_WINDOW_SECONDS, split_search_seconds=audio_manifest()["split_search_seconds"],
        split_window_samples=audio_manifest()["split_window_samples"], backends={"coreml": spec},
    )


def _manifest(layout: Layout, dims: dict[str, int], special: dict[str, int], languages: dict[str, int],
              target: str | None, precision: str, encoder: GraphSpec, decoder: GraphSpec) -> dict[str, Any]:
    """What a manifest.json would say for these files (Bundle.manifest; the daemon reads it like one)."""
    def graph(g: GraphSpec) -> dict[str, Any]:
        return {"file": _rel(layout, g.path),
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in g.inputs],
                "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in g.outputs]}

    return {
        "format": FORMAT, "decoder_contract": layout.contract,
        "source": {"checkpoint": f"FluidInference Core ML files in {layout.root}",
                   "encoder": _rel(layout, layout.encoder), "decoder": _rel(layout, layout.decoder)},
        "audio": audio_manifest(dims["n_mels"]),
        "model": {"d_model": dims["d_model"], "decoder_layers": dims["layers"], "decoder_heads": dims["heads"],
                  "head_dim": dims["head_dim"], "vocab_size": dims["vocab"], "n_mels": dims["n_mels"],
                  "subsampling_stages": SUBSAMPLING_STAGES},
        "encoder": {"buckets": [dims["frames"]]},
        "decoder": {"cache_capacity": dims["capacity"], "cross_frames": dims["cross"], "mask_value": MASK_VALUE},
        "tokenizer": _rel(layout, layout.tokenizer),
        "tokens": {"eos": special["<|endoftext|>"], "pad": special.get("<pad>"), "special": special,
                   "languages": languages},
        "prompt": {"template": list(PROMPT_TEMPLATE), "punctuation": dict(PUNCTUATION)},
        "generation": {"max_new_tokens": dims["capacity"] - len(PROMPT_TEMPLATE), "eos_logit_bias": 0.0},
        "backends": {"coreml": {"precision": precision, "minimum_deployment_target": target,
                                "encoders": {str(dims["frames"]): graph(encoder)}, "decoder": graph(decoder)}},
        "files": {},  # no checksums: the published folders list none (fetch verifies downloads against the Hub)
    }
