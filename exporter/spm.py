"""SentencePiece tokenizers with the real model's control-piece names, for tiny and demo checkpoints.

The control pieces are user-defined symbols given in the real tokenizer's order after `<unk>`, so ids 0–16 land
where Cohere Transcribe has them; language pieces follow. Byte fallback turns characters the model never saw
into `<0xHH>` pieces, as the real tokenizer does for rare characters.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

# ids 1..16 of the real tokenizer (id 0 is <unk>); 14 and 15 are not documented in our references, so they
# get placeholder names that no code reads.
CONTROL_PIECES = (
    "<|nospeech|>", "<pad>", "<|endoftext|>", "<|startoftranscript|>", "<|pnc|>", "<|nopnc|>",
    "<|startofcontext|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>",
    "<|nodiarize|>", "<|reserved14|>", "<|reserved15|>", "<|emo:undefined|>",
)
# The 14 languages Cohere Transcribe 03-2026 was trained on.
TRAINED_LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "el", "ar", "vi", "ja", "zh", "ko")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: Path,
                    languages: Iterable[str] = TRAINED_LANGUAGES) -> Path:
    """Train a BPE SentencePiece model with byte fallback; write it to `out` (tokenizer.model).

    Args:
        texts: training sentences (plain text, no control pieces).
        vocab_size: total pieces, including the 17 control pieces, the language pieces and 256 byte pieces.
    """
    specials = list(CONTROL_PIECES) + [f"<|{lang}|>" for lang in languages]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=specials,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        split_digits=True,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out
