"""manifest.json for a bundle: audio parameters, model dims, token ids read by piece name, prompt, files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece as spm

from daemon.model.bundle import CONTRACT, FORMAT, FORMAT_VERSION
from daemon.model.checksums import sha256_of

from .spm import CONTROL_PIECES, TRAINED_LANGUAGES

if TYPE_CHECKING:
    from .contract import Dims  # its module needs torch; the manifest itself does not

PROMPT_TEMPLATE = ["\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>",
                   "<|{language}|>", "<|{language}|>", "{punctuation}", "<|noitn|>", "<|notimestamp|>",
                   "<|nodiarize|>"]
# The real tokenizer's ids (reference/model.md §6): checked when a 16384-piece tokenizer is exported.
REAL_IDS = {"<|endoftext|>": 3, "<|startoftranscript|>": 4, "<|pnc|>": 5, "<|nopnc|>": 6,
            "<|startofcontext|>": 7, "<|noitn|>": 9, "<|notimestamp|>": 11, "<|nodiarize|>": 13,
            "<|emo:undefined|>": 16, "\u2581": 13764, "<|en|>": 62, "<|fr|>": 69, "<|de|>": 76, "<|es|>": 169,
            "<|it|>": 97, "<|pt|>": 149, "<|nl|>": 60, "<|pl|>": 148, "<|el|>": 77, "<|ar|>": 28, "<|vi|>": 194,
            "<|ja|>": 98, "<|zh|>": 50, "<|ko|>": 110}


def token_ids(tokenizer_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(control piece → id, language → id) read from the tokenizer; languages are those it has a piece for."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))

    def has(p: str) -> bool:
        return sp.piece_to_id(p) != sp.unk_id()

    needed = {p for p in PROMPT_TEMPLATE if "{" not in p} | {"<|endoftext|>", "<|pnc|>", "<|nopnc|>"}
    missing = sorted(p for p in needed if not has(p))
    if missing:
        raise ValueError(f"{tokenizer_path} lacks the control pieces {missing}")
    special = {p: int(sp.piece_to_id(p)) for p in (*CONTROL_PIECES, "\u2581") if has(p)}
    languages = {lang: int(sp.piece_to_id(f"<|{lang}|>")) for lang in TRAINED_LANGUAGES if has(f"<|{lang}|>")}
    if sp.get_piece_size() == 16384:  # the real tokenizer: its ids must match the published table
        got = {**special, **{f"<|{k}|>": v for k, v in languages.items()}}
        wrong = {p: (got.get(p), i) for p, i in REAL_IDS.items() if got.get(p) != i}
        if wrong:
            raise ValueError(f"token ids differ from Cohere Transcribe's: {wrong} (got, expected)")
    return special, languages


def build_manifest(*, dims: Dims, buckets: list[int], feature_extractor: Any, tokenizer_path: Path,
                   backends: dict[str, dict[str, Any]], max_new_tokens: int, source: dict[str, Any]
                   ) -> dict[str, Any]:
    """The manifest without `files` (added by `write_manifest` once every file is in place)."""
    fe = feature_extractor
    special, languages = token_ids(tokenizer_path)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "decoder_contract": CONTRACT,
        "source": source,
        "audio": {
            "sample_rate": fe.sampling_rate, "n_fft": fe.n_fft, "win_length": fe.win_length,
            "hop_length": fe.hop_length, "n_mels": fe.feature_size, "preemphasis": fe.preemphasis,
            "dither": fe.dither, "log_zero_guard": 2.0**-24, "cmvn_eps": 1e-5,
            "mel_filters": "mel_filters.npy", "window": "window.npy",
            "filterbank": "transformers CohereAsrFeatureExtractor: slaney mel, float32 (not the trained bf16 one)",
            "max_window_seconds": fe.max_audio_clip_s, "split_search_seconds": fe.overlap_chunk_second,
            "split_window_samples": fe.min_energy_window_samples,
        },
        "model": {"d_model": dims.d_model, "decoder_layers": dims.n_layers, "decoder_heads": dims.n_heads,
                  "head_dim": dims.head_dim, "vocab_size": dims.vocab_size, "n_mels": dims.n_mels,
                  "subsampling_stages": dims.subsampling_stages},
        "encoder": {"buckets": sorted(buckets)},
        "decoder": {"cache_capacity": dims.cache_capacity, "cross_frames": dims.cross_frames,
                    "mask_value": -1e4},
        "tokenizer": "tokenizer.model",
        "tokens": {"eos": special["<|endoftext|>"], "pad": special.get("<pad>"), "special": special,
                   "languages": languages},
        "prompt": {"template": PROMPT_TEMPLATE, "punctuation": {"on": "<|pnc|>", "off": "<|nopnc|>"}},
        "generation": {"max_new_tokens": max_new_tokens, "eos_logit_bias": 0.0},
        "backends": backends,
    }


def write_manifest(out: Path, manifest: dict[str, Any], files: list[str]) -> Path:
    """Add the SHA-256 of every bundle file and write manifest.json."""
    manifest = {**manifest, "files": {f: sha256_of(out / f) for f in sorted(files)}}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path
