"""FluidInference folders without the export toolchain: layout recognition (hub and side by side), one-line errors
for malformed folders, the numpy filterbank, the vocab.json tokenizer, and the FluidAudio adapter's translation of
the greedy loop (through the Core ML runtime seam), the 98-token cap included."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import BackendError, BundleError, ConfigError
from daemon.model.backends import default_backend
from daemon.model.backends.coreml import coreml_backend
from daemon.model.backends.coreml_reference import package_of
from daemon.model.decode import DecodeOptions
from daemon.model.fluidaudio import load_model
from daemon.model.fluidaudio_features import slaney_mel_filters, symmetric_hann
from daemon.model.fluidaudio_vocab import VocabTokenizer, open_tokenizer
from daemon.model.tokenizer import Tokenizer
from daemon.model.transcriber import Transcriber

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
ENC, V1, V2 = "cohere_encoder", "cohere_decoder_cache_external", "cohere_decoder_cache_external_v2"
# published ids (reference/model.md §6), for a 16384-piece vocab.json
PUBLISHED = {0: "<unk>", 1: "<|nospeech|>", 2: "<pad>", 3: "<|endoftext|>", 4: "<|startoftranscript|>",
             5: "<|pnc|>", 6: "<|nopnc|>", 7: "<|startofcontext|>", 8: "<|itn|>", 9: "<|noitn|>",
             10: "<|timestamp|>", 11: "<|notimestamp|>", 12: "<|diarize|>", 13: "<|nodiarize|>",
             16: "<|emo:undefined|>", 13764: "\u2581", 62: "<|en|>", 69: "<|fr|>", 76: "<|de|>", 169: "<|es|>",
             97: "<|it|>", 149: "<|pt|>", 60: "<|nl|>", 148: "<|pl|>", 77: "<|el|>", 28: "<|ar|>", 194: "<|vi|>",
             98: "<|ja|>", 50: "<|zh|>", 110: "<|ko|>"}
REAL = {"d": 1024, "h": 8, "hd": 128, "layers": 8, "vocab": 16384}


def _row(name: str, shape: list[int], dtype: str = "Float32", flexible_last: int | None = None) -> dict[str, str]:
    row = {"name": name, "type": "MultiArray", "dataType": dtype, "shape": json.dumps(shape),
           "isOptional": "0", "hasShapeFlexibility": "0"}
    if flexible_last is not None:
        row |= {"hasShapeFlexibility": "1",
                "shapeRange": json.dumps([[d, d] for d in shape[:-1]] + [[1, flexible_last]])}
    return row


def _compiled(path: Path, inputs: list[dict[str, str]], outputs: list[dict[str, str]], macos: str = "14.0") -> None:
    """A stand-in .mlmodelc: what the daemon reads of one (metadata.json, as coremlcompiler writes it)."""
    path.mkdir(parents=True)
    (path / "coremldata.bin").write_bytes(b"\0")
    (path / "metadata.json").write_text(json.dumps([{"inputSchema": inputs, "outputSchema": outputs,
                                                     "availability": {"macOS": macos},
                                                     "storagePrecision": "Float16"}]))


def _models(folder: Path, dims: dict[str, int], versions: tuple[int, ...] = (2,), cache_dtype: str = "Float32") -> None:
    d, h, hd, n, v = dims["d"], dims["h"], dims["hd"], dims["layers"], dims["vocab"]
    _compiled(folder / f"{ENC}.mlmodelc", [_row("input_features", [1, 128, 3500]),
                                           _row("feature_length", [1], "Int32")],
              [_row("hidden_states", [1, 438, d])], macos="15.0")
    cache = [1, h, 108, hd]
    for version in versions:
        mask = _row("attention_mask", [1, 1, 1, 1], flexible_last=108) if version == 1 else _row(
            "attention_mask", [1, 1, 1, 108])
        ins = [_row("input_id", [1, 1], "Int32"), _row("position_id", [1, 1], "Int32"),
               _row("encoder_hidden_states", [1, 438, d]), _row("cross_attention_mask", [1, 1, 1, 438]), mask,
               *[_row(f"{kv}_cache_{i}", cache, cache_dtype) for kv in "kv" for i in range(n)]]
        outs = [_row("logits", [1, v]), *[_row(f"{kv}_cache_{i}_out", cache, cache_dtype) for kv in "kv"
                                          for i in range(n)]]
        _compiled(folder / f"{V1 if version == 1 else V2}.mlmodelc", ins, outs)


def _vocab(path: Path) -> Path:
    pieces = [PUBLISHED.get(i, f"<0x{i - 300:02X}>" if 300 <= i < 556 else f"\u2581w{i}") for i in range(16384)]
    path.write_text(json.dumps({str(i): p for i, p in enumerate(pieces)}))
    return path


def _hub(root: Path) -> Path:
    """FluidInference/cohere-transcribe-03-2026-coreml as downloaded: q8/ with both decoders, vocab.json above."""
    _models(root / "q8", REAL, versions=(1, 2))
    (root / "q8" / f"{V2}.mlpackage").mkdir()  # a package copy beside the compiled model
    _vocab(root / "vocab.json")
    return root


def _tiny(folder: Path, version: int) -> dict[str, int]:
    """Side by side, the demo's tokenizer.model, small widths (the adapter tests run 108 steps of it)."""
    dims = {"d": 8, "h": 2, "hd": 4, "layers": 2, "vocab": Tokenizer(DEMO / "tokenizer.model").vocab_size}
    _models(folder, dims, versions=(version,))
    shutil.copyfile(DEMO / "tokenizer.model", folder / "tokenizer.model")
    return dims


# --- layout ---------------------------------------------------------------------------------------------------

def test_hub_layout_is_read_as_a_bundle(tmp_path: Path) -> None:
    root = _hub(tmp_path / "cohere-transcribe-03-2026-coreml")
    for model in (root, root / "q8"):  # the repository, or its q8 folder
        b = load_model(model)
        spec = b.backends["coreml"]
        assert spec.decoder.path == root / "q8" / f"{V2}.mlmodelc"  # v2 before v1, compiled before package
        assert spec.encoders[3500].path == root / "q8" / f"{ENC}.mlmodelc"
        assert b.tokenizer_path == root / "vocab.json" and b.contract == "fluidaudio-v2"
        assert (b.buckets, b.cross_frames, b.cache_capacity, b.max_new_tokens) == ((3500,), 438, 108, 98)
        assert (b.n_layers, b.n_heads, b.head_dim, b.vocab_size, b.mask_value) == (8, 8, 128, 16384, -1e4)
        assert (b.eos_id, b.languages["es"], b.special["\u2581"]) == (3, 169, 13764)
        assert b.manifest["backends"]["coreml"]["minimum_deployment_target"] == "macOS15.0"
        assert b.features.mel_filters.shape == (128, 257) and b.features.dither == 1e-5
        names = [t.name for t in spec.decoder.inputs]
        assert names[:5] == ["input_id", "position_id", "encoder_hidden_states", "cross_attention_mask",
                             "attention_mask"] and len(names) == 5 + 16


def test_side_by_side_v1(tmp_path: Path) -> None:
    _tiny(tmp_path, 1)
    b = load_model(tmp_path)
    assert b.contract == "fluidaudio-v1" and b.tokenizer_path == tmp_path / "tokenizer.model"
    mask = next(t for t in b.backends["coreml"].decoder.inputs if t.name == "attention_mask")
    assert mask.shape == (1, 1, 1, -1)


def _break(case: str, root: Path) -> None:
    q8 = root / "q8"
    if case == "no decoder":
        for p in q8.glob("cohere_decoder*"):
            shutil.rmtree(p)
    elif case == "no tokenizer":
        (root / "vocab.json").unlink()
    elif case == "two model folders":
        shutil.copytree(q8, root / "f16")
    elif case == "wrong cache shape":
        meta = json.loads((q8 / f"{V2}.mlmodelc" / "metadata.json").read_text())
        meta[0]["inputSchema"][-1]["shape"] = "[1, 8, 100, 128]"
        (q8 / f"{V2}.mlmodelc" / "metadata.json").write_text(json.dumps(meta))
    elif case == "no metadata":
        (q8 / f"{ENC}.mlmodelc" / "metadata.json").unlink()
    elif case == "vocab with a gap":
        v = json.loads((root / "vocab.json").read_text())
        del v["5"]
        (root / "vocab.json").write_text(json.dumps(v))
    elif case == "wrong token ids":
        v = json.loads((root / "vocab.json").read_text())
        v["62"], v["63"] = v["63"], v["62"]
        (root / "vocab.json").write_text(json.dumps(v))
    elif case == "v1 with a fixed mask":
        shutil.rmtree(q8 / f"{V2}.mlmodelc")
        shutil.rmtree(q8 / f"{V2}.mlpackage")
        meta = json.loads((q8 / f"{V1}.mlmodelc" / "metadata.json").read_text())
        meta[0]["inputSchema"][4] = _row("attention_mask", [1, 1, 1, 108])
        (q8 / f"{V1}.mlmodelc" / "metadata.json").write_text(json.dumps(meta))
    elif case == "nothing":
        shutil.rmtree(q8)


@pytest.mark.parametrize(("case", "message"), [
    ("no decoder", "has no decoder (cohere_decoder_cache_external_v2 or cohere_decoder_cache_external"),
    ("no tokenizer", "has no tokenizer.model or vocab.json"),
    ("two model folders", "holds Core ML files in several folders (f16, q8): pass one of them as --model"),
    ("wrong cache shape", "input v_cache_7 has shape (1, 8, 100, 128), FluidAudio's contract needs (1, 8, 108, 128)"),
    ("no metadata", "metadata.json: cannot read the model's inputs and outputs"),
    ("vocab with a gap", "the ids are not 0…16382 without gaps"),
    ("wrong token ids", "token ids differ from Cohere Transcribe's"),
    ("v1 with a fixed mask", "the v1 attention_mask must have a flexible length (its length is the position)"),
    ("nothing", "has no manifest.json (nor FluidInference Core ML files"),
])
def test_malformed_folder_is_one_line(tmp_path: Path, case: str, message: str) -> None:
    root = _hub(tmp_path / "hub")
    _break(case, root)
    with pytest.raises(BundleError) as e:
        load_model(root)
    assert "\n" not in str(e.value) and message in str(e.value), str(e.value)


def test_cli_names_what_is_missing(tmp_path: Path) -> None:
    root = _hub(tmp_path / "hub")
    _break("no tokenizer", root)
    r = subprocess.run([sys.executable, "-m", "daemon", "transcribe", "--model", str(root), "x.wav"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: FluidInference folder") and r.stderr.count("\n") == 1, r.stderr


def test_core_ml_only_off_a_mac_and_the_package_the_evaluator_needs(tmp_path: Path) -> None:
    root = _hub(tmp_path / "hub")
    with pytest.raises(BackendError, match="holds Core ML files only: run it on a Mac"):
        default_backend(load_model(root))
    assert package_of(root / "q8" / f"{V2}.mlmodelc") == root / "q8" / f"{V2}.mlpackage"
    with pytest.raises(BackendError, match=r"has only the compiled cohere_encoder\.mlmodelc"):
        package_of(root / "q8" / f"{ENC}.mlmodelc")


# --- features and tokenizer -----------------------------------------------------------------------------------

def test_mel_filterbank_matches_the_exported_one() -> None:
    """models/demo/mel_filters.npy is transformers' CohereAsrFeatureExtractor filterbank (exporter/export.py);
    the numpy one equals it to float32 rounding (measured max |Δ| 3.7e-9 of values up to 0.042)."""
    ref = np.load(DEMO / "mel_filters.npy")
    ours = slaney_mel_filters()
    assert ours.shape == ref.shape == (128, 257) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(symmetric_hann(), np.load(DEMO / "window.npy"), rtol=0, atol=1e-6)
    assert not np.allclose(slaney_mel_filters(f_max=7000.0), ref, atol=1e-4)  # the comparison can fail


def test_vocab_json_decodes_like_sentencepiece(tmp_path: Path) -> None:
    sp_tok = Tokenizer(DEMO / "tokenizer.model")
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({str(i): sp_tok.sp.id_to_piece(i) for i in range(sp_tok.vocab_size)}))
    tok = open_tokenizer(path)
    assert isinstance(tok, VocabTokenizer) and tok.vocab_size == sp_tok.vocab_size
    for piece in ("<|endoftext|>", "<|en|>", "<|pnc|>", "\u2581"):
        assert tok.piece_id(piece) == sp_tok.piece_id(piece)
    assert not tok.has_piece("<|xx|>")
    rng = np.random.default_rng(0)
    bytes_ = [i for i in range(tok.vocab_size) if sp_tok.sp.id_to_piece(i).startswith("<0x")]
    text = sp_tok.encode("ünïcode — 漢字 and the kitchen lights")  # byte-fallback pieces for the CJK
    assert set(text) & set(bytes_)
    sequences = [text, *[list(rng.integers(0, tok.vocab_size, int(rng.integers(1, 40)))) for _ in range(300)]]
    for ids in sequences:
        assert tok.decode(ids) == sp_tok.decode(ids), ids
    with pytest.raises(ConfigError, match=r"encoding text needs the SentencePiece tokenizer\.model"):
        tok.encode("hello")


# --- the adapter, through the Core ML runtime seam ----------------------------------------------------------------

class _Session:
    """A Core ML model stand-in: records every feed; the decoder writes a marker row at the position."""

    def __init__(self, path: Path, vocab: int, token: int) -> None:
        self.path, self.vocab, self.token, self.feeds = path, vocab, token, []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        if "input_features" in feeds:
            return {"hidden_states": np.ones((1, 438, 8), np.float32)}
        pos = int(feeds["position_id"][0, 0])
        out: dict[str, np.ndarray] = {"logits": np.eye(self.vocab, dtype=np.float32)[[self.token]]}
        for name, cache in feeds.items():
            if name.endswith("_cache_0") or name.endswith("_cache_1"):
                new = cache.copy()
                new[:, :, pos] = pos + 1  # the new row
                out[f"{name}_out"] = new
        return out


class _Runtime:
    def __init__(self, vocab: int, token: int) -> None:
        self.compiled: list[Path] = []
        self.sessions: dict[str, _Session] = {}
        self.vocab, self.token = vocab, token

    def compile(self, package: Path, destination: Path) -> None:
        self.compiled.append(package)

    def load(self, compiled: Path, compute_units: str, function: str | None) -> _Session:
        self.sessions[compiled.name] = _Session(compiled, self.vocab, self.token)
        return self.sessions[compiled.name]


@pytest.mark.parametrize("version", [1, 2])
def test_adapter_feeds_and_the_98_token_cap(tmp_path: Path, version: int, caplog) -> None:
    """A model that never says EOS: the window stops at 98 new tokens (stop_reason max_new_tokens) with a
    warning; every step got FluidAudio's inputs (position_id, both mask forms, ceil(L/8) valid cross frames,
    per-layer caches holding the rows of the steps before); the .mlmodelc files were loaded, not compiled."""
    dims = _tiny(tmp_path / "m", version)
    bundle = load_model(tmp_path / "m")
    runtime = _Runtime(dims["vocab"], token=200)
    backend = coreml_backend(bundle, runtime=runtime, cache_root=tmp_path / "cache")
    tr = Transcriber(bundle, backend, open_tokenizer(bundle.tokenizer_path), dither=0.0)
    samples = (0.1 * np.random.default_rng(1).standard_normal(16000 + 80)).astype(np.float32)  # 100 frames
    with caplog.at_level(logging.WARNING, logger="daemon.model.decode"):
        prompt, result = tr.transcribe_window(samples, DecodeOptions(language="en"))
    assert runtime.compiled == [] and sorted(runtime.sessions) == sorted(
        [f"{ENC}.mlmodelc", f"{V1 if version == 1 else V2}.mlmodelc"])
    assert result.stop_reason == "max_new_tokens" and result.tokens == (200,) * 98
    assert [r.message for r in caplog.records if "token cap" in r.message] != []
    (enc_feed,) = runtime.sessions[f"{ENC}.mlmodelc"].feeds
    assert enc_feed["input_features"].shape == (1, 128, 3500) and enc_feed["feature_length"].tolist() == [100]
    steps = runtime.sessions[f"{V1 if version == 1 else V2}.mlmodelc"].feeds
    assert len(steps) == 10 + 98 - 1
    for pos, f in enumerate(steps):
        assert f["position_id"].tolist() == [[pos]] and f["input_id"].tolist() == [[([*prompt, 200])[min(pos, 10)]]]
        cross = f["cross_attention_mask"].reshape(-1)
        assert (cross[:13] == 0).all() and (cross[13:] == -1e4).all()  # ceil(100/8) = 13 valid frames
        mask = f["attention_mask"]
        if version == 1:
            assert mask.shape == (1, 1, 1, pos + 1) and (mask == 0).all()
        else:
            assert mask.shape == (1, 1, 1, 108) and (mask[..., : pos + 1] == 0).all() and (
                mask[..., pos + 1 :] == -1e4).all()
        k = f["k_cache_1"]
        assert k.shape == (1, 2, 108, 4) and (k[:, :, :pos] == np.arange(1, pos + 1)[None, None, :, None]).all()
        assert (k[:, :, pos:] == 0).all()
