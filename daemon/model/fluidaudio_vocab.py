"""A tokenizer from FluidInference's vocab.json alone (id → piece), for folders that ship no tokenizer.model.

Decoding needs only the pieces: `<0xHH>` byte-fallback pieces are buffered and UTF-8-decoded whole, `▁` becomes
a space, and control pieces (`<|…|>`, `<pad>`, `<unk>`, `<s>`, `</s>`) contribute nothing, as the SentencePiece
Tokenizer does (the same StreamingDetokenizer runs on both). Prompt ids are looked up by piece name. Encoding
text needs the BPE merges, which only tokenizer.model has.
"""

from __future__ import annotations

import json
from pathlib import Path

from daemon.errors import BundleError, ConfigError
from daemon.model.tokenizer import Tokenizer, _byte_value

_WORD_BOUNDARY = "\u2581"
_CONTROL = ("<pad>", "<unk>", "<s>", "</s>")


def read_vocab(path: Path) -> list[str]:
    """The pieces of a vocab.json, by id: {"0": "<unk>", …} (FluidInference's) or a JSON list of pieces.

    Raises:
        BundleError: unreadable, not JSON, or ids that are not exactly 0…n−1.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if isinstance(data, list) and all(isinstance(p, str) for p in data):
        pieces: list[str] = data
    elif isinstance(data, dict) and all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                                        for k, v in data.items()):
        by_id = {int(k): v for k, v in data.items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise BundleError(f"{path}: the ids are not 0…{len(by_id) - 1} without gaps")
        pieces = [by_id[i] for i in range(len(by_id))]
    else:
        raise BundleError(f"{path} is not a vocabulary (a JSON object of id → piece, or a list of pieces)")
    if not pieces:
        raise BundleError(f"{path} holds no pieces")
    return pieces


def _piece_text(piece: str) -> bytes:
    if _byte_value(piece) is not None or piece in _CONTROL or (piece.startswith("<|") and piece.endswith("|>")):
        return b""
    return piece.replace(_WORD_BOUNDARY, " ").encode("utf-8")


class VocabTokenizer(Tokenizer):
    """Tokenizer's decoding and piece lookup from vocab.json (no SentencePiece model)."""

    def __init__(self, path: Path) -> None:  # no super().__init__: there is no SentencePiece model to load
        self.path = path
        self.pieces = read_vocab(path)
        self.vocab_size = len(self.pieces)
        self._ids = {p: i for i, p in reversed(list(enumerate(self.pieces)))}  # a repeated piece: its first id
        self._byte_of = [_byte_value(p) for p in self.pieces]
        self._text_of = [_piece_text(p) for p in self.pieces]

    def piece_id(self, piece: str) -> int:
        if piece not in self._ids:
            raise ConfigError(f"the tokenizer has no piece {piece!r}")
        return self._ids[piece]

    def has_piece(self, piece: str) -> bool:
        return piece in self._ids

    def encode(self, text: str) -> list[int]:
        raise ConfigError(f"{self.path} holds pieces only; encoding text needs the SentencePiece tokenizer.model")


def open_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer in `path`: a SentencePiece tokenizer.model, or a vocab.json of pieces (FluidInference's
    folders; decoding and piece lookup only)."""
    return VocabTokenizer(path) if path.suffix == ".json" else Tokenizer(path)
