"""FluidAudio's contract end to end (issue 14): `python -m exporter --contract fluidaudio-v1|v2` on random tiny
configs, the folder checked name by name and shape by shape against the published contract as
../shared/reference/coreml-prior-art.md §2 states it, and the daemon loading that folder with `--model FOLDER`
(`coreml-reference`) giving transformers generate()'s tokens on 10 clips per contract."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import soundfile as sf
from reference import LANGS, hf_greedy, prompt_ids

from daemon.audio import SAMPLE_RATE as SR
from daemon.model.decode import DecodeOptions
from daemon.model.tokenizer import Tokenizer
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip
from exporter.check import compare

logging.getLogger("coremltools").setLevel(logging.ERROR)
pytestmark = pytest.mark.slow

# The published contract, copied from coreml-prior-art.md §2 (v1 table; v2: the same names, attention_mask fixed
# at (1,1,1,108)) and §1 (encoder). "D", "H", "HD", "V", "L": the 2B model's 1024, 8, 128, 16384 and 8 layers
# (REAL); a tiny config has its own. 108 slots, 438 cross frames, 128 mels and 3500 frames are literal.
REAL = {"D": 1024, "H": 8, "HD": 128, "V": 16384, "L": 8}
ENCODER_TABLE = {
    "in": {"input_features": ((1, 128, 3500), "float32"), "feature_length": ((1,), "int32")},
    "out": {"hidden_states": ((1, 438, "D"), None)},  # "FP16 compute": its declared dtype is not stated
}
DECODER_TABLE = {
    "in": {"input_id": ((1, 1), "int32"), "position_id": ((1, 1), "int32"),
           "encoder_hidden_states": ((1, 438, "D"), "float32"), "cross_attention_mask": ((1, 1, 1, 438), "float32"),
           "attention_mask": ((1, 1, 1, "1..108"), "float32"),  # v1: RangeDim(1,108); v2: fixed 108
           "k_cache_{i}": ((1, "H", 108, "HD"), "float32"), "v_cache_{i}": ((1, "H", 108, "HD"), "float32")},
    "out": {"logits": ((1, "V"), None), "k_cache_{i}_out": ((1, "H", 108, "HD"), None),
            "v_cache_{i}_out": ((1, "H", 108, "HD"), None)},
}
FILES = {"fluidaudio-v1": "cohere_decoder_cache_external.mlpackage",
         "fluidaudio-v2": "cohere_decoder_cache_external_v2.mlpackage"}
PRESET = {"fluidaudio-v1": "a", "fluidaudio-v2": "b"}  # each contract with another tiny config
N_CLIPS = 10
CLIP_S = [0.5, 1.7, 3.2, 4.9, 7.3, 9.6, 13.8, 19.4, 27.5, 35.0]  # short, past 20.48 s and the full window
MAX_NEW = 24


def _spec_table(package: Path) -> dict[str, dict[str, tuple[tuple[object, ...], str]]]:
    """A package's declared inputs and outputs read with coremltools (not through the daemon): name → (shape,
    dtype), a flexible dimension as "lo..hi"."""
    from coremltools.models.utils import load_spec

    dtypes = {65568: "float32", 65552: "float16", 131104: "int32"}
    spec = load_spec(str(package))
    out: dict[str, dict[str, tuple[tuple[object, ...], str]]] = {}
    for side, features in (("in", spec.description.input), ("out", spec.description.output)):
        out[side] = {}
        for f in features:
            a = f.type.multiArrayType
            shape: list[object] = [int(d) for d in a.shape]
            if a.WhichOneof("ShapeFlexibility") == "shapeRange":
                shape = [d if r.lowerBound == r.upperBound else f"{r.lowerBound}..{r.upperBound}"
                         for d, r in zip(shape, a.shapeRange.sizeRanges, strict=True)]
            out[side][f.name] = (tuple(shape), dtypes[a.dataType])
    return out


def _expected(table: dict, version: int, dims: dict[str, int]) -> dict[str, dict[str, tuple]]:
    """The published table for a model's widths, per-layer rows for each of its layers."""
    out: dict[str, dict[str, tuple]] = {}
    for side, rows in table.items():
        out[side] = {}
        for name, (shape, dtype) in rows.items():
            if name == "attention_mask" and version == 2:
                shape = (1, 1, 1, 108)
            shape = tuple(dims.get(s, s) if isinstance(s, str) and s in dims else s for s in shape)
            for i in range(dims["L"]) if "{i}" in name else [None]:
                out[side][name.format(i=i)] = (shape, dtype)
    return out


def _check_against_table(folder: Path, contract: str, dims: dict[str, int], decoder: str | None = None) -> None:
    """The encoder and the decoder (default: the contract's file name) against the tables, for `contract`."""
    version = int(contract[-1])
    for package, table in (("cohere_encoder.mlpackage", ENCODER_TABLE), (decoder or FILES[contract], DECODER_TABLE)):
        got = _spec_table(folder / package)
        want = _expected(table, version, dims)
        for side in ("in", "out"):
            assert sorted(got[side]) == sorted(want[side]), (package, side)
            for name, (shape, dtype) in want[side].items():
                assert got[side][name][0] == shape, (package, name, got[side][name][0], shape)
                if dtype is not None:
                    assert got[side][name][1] == dtype, (package, name)


def _dims(model) -> dict[str, int]:
    c = model.config
    return {"D": c.hidden_size, "H": c.num_attention_heads, "HD": c.head_dim, "V": c.vocab_size,
            "L": c.num_hidden_layers}


def _export(ckpt: Path, out: Path, contract: str, precision: str = "fp32") -> Path:
    r = subprocess.run([sys.executable, "-m", "exporter", "--contract", contract, "--checkpoint", str(ckpt),
                        "--out", str(out), "--precision", precision], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def folders(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fluidaudio")
    return {c: _export(tiny_checkpoints[p], root / c, c) for c, p in PRESET.items()}


@pytest.mark.parametrize("contract", list(FILES))
def test_export_writes_the_published_contract(contract, folders, hf_models) -> None:
    """File names as published, every tensor of the reference document's tables with its shape (the tiny
    model's widths in place of 1024/8/128/16384, 108 slots and 438 cross frames literal), nothing else."""
    folder = folders[contract]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["cohere_encoder.mlpackage", FILES[contract], "tokenizer.model", "vocab.json"])
    _check_against_table(folder, contract, _dims(hf_models[PRESET[contract]]))
    vocab = json.loads((folder / "vocab.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert vocab == {str(i): sp.id_to_piece(i) for i in range(sp.get_piece_size())}


def test_contract_check_can_fail(folders, hf_models) -> None:
    """The table check names a wrong shape: v1's flexible mask against v2's table."""
    with pytest.raises(AssertionError, match="attention_mask"):
        _check_against_table(folders["fluidaudio-v1"], "fluidaudio-v2", _dims(hf_models["a"]),
                             FILES["fluidaudio-v1"])


@pytest.mark.parametrize("contract", list(FILES))
def test_tokens_identical_to_generate(contract, folders, tiny_checkpoints, hf_models, hf_features) -> None:
    """`--model FOLDER --backend coreml-reference` (the CLI's loader): 10 clips of 0.5–35 s, five languages,
    punctuation on and off, transformers generate()'s greedy tokens exactly; log-probs within 1e-3."""
    preset = PRESET[contract]
    tr = load_transcriber(str(folders[contract]), "coreml-reference", dither=0.0)
    assert tr.bundle.contract == contract and tr.bundle.max_new_tokens == 98
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoints[preset] / "tokenizer.model"))
    eos = sp.piece_to_id("<|endoftext|>")
    rows = []
    for i, seconds in enumerate(CLIP_S):
        x = speech_clip(seconds, 2000 + i)
        lang, pnc = LANGS[i % len(LANGS)], i % 2 == 1
        prompt = prompt_ids(sp, lang, pnc)
        ref_tokens, ref_lp = hf_greedy(hf_models[preset], hf_features, x, prompt, MAX_NEW, eos)
        options = DecodeOptions(language=lang, punctuation=pnc, max_new_tokens=MAX_NEW)
        rows.append(compare(tr, x, options, prompt, ref_tokens, ref_lp, ref_eos=False))
    assert len(rows) == N_CLIPS
    assert [i for i, r in enumerate(rows) if not r.same_tokens] == []
    assert sum(r.n_ref for r in rows) >= 100  # the clips decode real sequences, not EOS at once
    worst = max(r.drift for r in rows)
    print(f"{contract} (tiny {preset}): {len(rows)}/{len(rows)} clips identical, "
          f"{sum(r.n_ref for r in rows)} tokens, max |Δ logprob| {worst:.2e}")
    assert worst <= 1e-3


def test_cli_hub_layout_with_vocab_json(folders, tiny_checkpoints, hf_models, hf_features, tmp_path) -> None:
    """The hub layout (models in q8/, vocab.json at the root, no tokenizer.model) through the daemon's CLI:
    `transcribe --model ROOT --format json` gives generate()'s tokens at the folder's own budget (98) and their
    text as SentencePiece detokenizes them."""
    root = tmp_path / "cohere-transcribe-03-2026-coreml"
    (root / "q8").mkdir(parents=True)
    src = folders["fluidaudio-v2"]
    for name in ("cohere_encoder.mlpackage", FILES["fluidaudio-v2"]):
        shutil.copytree(src / name, root / "q8" / name)
    shutil.copyfile(src / "vocab.json", root / "vocab.json")
    clips = [speech_clip(s, 3000 + i) for i, s in enumerate((2.5, 6.0))]
    paths = []
    for i, x in enumerate(clips):
        paths.append(tmp_path / f"clip{i}.wav")
        sf.write(paths[-1], x, SR, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "daemon", "transcribe", "--model", str(root), "--backend",
                        "coreml-reference", "--dither", "0", "--format", "json", "--language", "en",
                        *map(str, paths)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    docs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    sp_path = tiny_checkpoints["b"] / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    assert [d["file"] for d in docs] == [str(p) for p in paths]
    for doc, x in zip(docs, clips, strict=True):
        (seg,) = doc["segments"]
        ref, _ = hf_greedy(hf_models["b"], hf_features, x, prompt_ids(sp, "en", True), 98,
                           sp.piece_to_id("<|endoftext|>"))
        assert seg["tokens"] == ref and len(ref) > 0
        assert seg["text"] == Tokenizer(sp_path).decode(ref)


# model.md §6: the published tokenizer's control and language ids
PUBLISHED_PIECES = {0: "<unk>", 1: "<|nospeech|>", 2: "<pad>", 3: "<|endoftext|>", 4: "<|startoftranscript|>",
                    5: "<|pnc|>", 6: "<|nopnc|>", 7: "<|startofcontext|>", 8: "<|itn|>", 9: "<|noitn|>",
                    10: "<|timestamp|>", 11: "<|notimestamp|>", 12: "<|diarize|>", 13: "<|nodiarize|>",
                    16: "<|emo:undefined|>", 13764: "\u2581", 62: "<|en|>", 69: "<|fr|>", 76: "<|de|>",
                    169: "<|es|>", 97: "<|it|>", 149: "<|pt|>", 60: "<|nl|>", 148: "<|pl|>", 77: "<|el|>",
                    28: "<|ar|>", 194: "<|vi|>", 98: "<|ja|>", 50: "<|zh|>", 110: "<|ko|>"}


def test_real_dims_export_is_the_published_contract_literally(tmp_path) -> None:
    """The 2B model's widths (decoder 1024 wide, 8 layers of 8 heads × 128, vocabulary 16384; encoder 1280 wide,
    one Conformer layer instead of 48, random weights), exported in FP16 (the default, as published): the tables
    match with their literal numbers, [1,128,3500] → [1,438,1024] and caches [1,8,108,128]; the daemon reads
    the folder (with a 16384-piece vocab.json holding the published ids) as 8 layers, 108 slots, 98 new tokens."""
    import torch
    from transformers import CohereAsrConfig, CohereAsrForConditionalGeneration

    from daemon.model.fluidaudio import load_model
    from exporter.fluidaudio import DECODERS, ENCODER, _convert, tensor_specs
    from exporter.fluidaudio_wrappers import FluidDecoderStep, FluidEncoder
    from exporter.wrappers import finite_encoder_mask

    enc = dict(hidden_size=1280, num_hidden_layers=1, num_attention_heads=8, intermediate_size=5120,
               subsampling_conv_channels=256, conv_kernel_size=9, num_mel_bins=128, subsampling_factor=8)
    cfg = CohereAsrConfig(encoder_config=enc, vocab_size=16384, hidden_size=1024, num_hidden_layers=8,
                          num_attention_heads=8, intermediate_size=64, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = CohereAsrForConditionalGeneration(cfg).eval()
    specs = tensor_specs(model, 2)
    with finite_encoder_mask():
        _convert(FluidEncoder(model).eval(), specs["encoder_in"], specs["encoder_out"], "fp16", tmp_path / ENCODER)
    decoder = dict(DECODERS)["fluidaudio-v2"]
    _convert(FluidDecoderStep(model, 108, 2).eval(), specs["decoder_in"], specs["decoder_out"], "fp16",
             tmp_path / decoder)
    _check_against_table(tmp_path, "fluidaudio-v2", REAL)
    got = _spec_table(tmp_path / decoder)
    assert got["in"]["k_cache_7"] == ((1, 8, 108, 128), "float32") and "k_cache_8" not in got["in"]
    assert _spec_table(tmp_path / ENCODER)["out"]["hidden_states"][0] == (1, 438, 1024)
    pieces = [PUBLISHED_PIECES.get(i, f"<0x{i - 300:02X}>" if 300 <= i < 556 else f"\u2581w{i}")
              for i in range(16384)]
    (tmp_path / "vocab.json").write_text(json.dumps({str(i): p for i, p in enumerate(pieces)}))
    b = load_model(tmp_path)
    assert (b.contract, b.n_layers, b.n_heads, b.head_dim, b.cache_capacity, b.cross_frames, b.vocab_size,
            b.max_new_tokens, b.eos_id, b.languages["en"]) == ("fluidaudio-v2", 8, 8, 128, 108, 438, 16384, 98, 3, 62)
