"""SentencePiece tokenizer: prompt ids from piece names, and detokenization that never splits a UTF-8 character.

The model's control tokens (`<|en|>`, `<|pnc|>`, ...) are ordinary pieces: their ids are read with piece_to_id,
never hard-coded. Rare characters (CJK in a tokenizer that lacks them) arrive as `<0xHH>` byte pieces, one
token per byte; `StreamingDetokenizer` buffers them and emits a character only once its last byte has arrived.
Written by hand because sentencepiece has no incremental decoder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from daemon.errors import BundleError, ConfigError

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_WORD_BOUNDARY = "\u2581"  # ▁, SentencePiece's space marker


class Tokenizer:
    """A SentencePiece model plus the piece-level knowledge the decoder needs."""

    def __init__(self, path: Path) -> None:
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise BundleError(f"cannot load tokenizer {path}: {e}") from e
        self.vocab_size: int = self.sp.get_piece_size()
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        # Per id: the byte value of a <0xHH> piece, or None.
        self._byte_of: list[int | None] = [_byte_value(p) for p in pieces]
        # Per id: the text bytes a piece contributes ("" for control pieces).
        self._text_of: list[bytes] = [_piece_text(p, self.sp, i) for i, p in enumerate(pieces)]

    def piece_id(self, piece: str) -> int:
        """The id of an exact piece; raises ConfigError when the tokenizer lacks it."""
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(self.sp.unk_id()):
            raise ConfigError(f"the tokenizer has no piece {piece!r}")
        return int(i)

    def has_piece(self, piece: str) -> bool:
        """Whether the tokenizer holds this exact piece."""
        i = self.sp.piece_to_id(piece)
        return i != self.sp.unk_id() or piece == self.sp.id_to_piece(self.sp.unk_id())

    def encode(self, text: str) -> list[int]:
        """Plain text to ids (no control tokens)."""
        return list(self.sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text: control pieces dropped, byte runs merged, ▁ → space, stripped."""
        d = StreamingDetokenizer(self)
        return (d.push_many(ids) + d.flush()).strip()


class StreamingDetokenizer:
    """Token-by-token detokenization that only ever emits whole UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._pending = b""  # bytes of an unfinished UTF-8 character
        self._started = False  # leading spaces of the first text are dropped

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (possibly "")."""
        byte = self._tok._byte_of[token_id]
        if byte is not None:
            self._pending += bytes([byte])
        else:
            if self._pending:  # a normal piece ends any byte run: flush it, broken or not
                out = self._pending.decode("utf-8", errors="replace")
                self._pending = b""
                return self._emit(out + self._tok._text_of[token_id].decode("utf-8"))
            return self._emit(self._tok._text_of[token_id].decode("utf-8"))
        n_complete = _complete_prefix(self._pending)
        done, self._pending = self._pending[:n_complete], self._pending[n_complete:]
        return self._emit(done.decode("utf-8", errors="replace"))

    def push_many(self, ids: Iterable[int]) -> str:
        """Add several tokens; return the concatenated completed text."""
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """End of stream: emit what is left (an unfinished character becomes U+FFFD)."""
        out, self._pending = self._pending.decode("utf-8", errors="replace"), b""
        return self._emit(out)

    def _emit(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return text


def _byte_value(piece: str) -> int | None:
    m = _BYTE_PIECE.match(piece)
    return int(m.group(1), 16) if m else None


def _piece_text(piece: str, sp: spm.SentencePieceProcessor, i: int) -> bytes:
    if sp.is_control(i) or sp.is_unknown(i) or _byte_value(piece) is not None:
        return b""
    if (piece.startswith("<|") and piece.endswith("|>")) or piece in ("<pad>", "<unk>", "<s>", "</s>"):
        return b""
    return piece.replace(_WORD_BOUNDARY, " ").encode("utf-8")


def _complete_prefix(buf: bytes) -> int:
    """Length of the longest prefix of `buf` that does not end inside a UTF-8 character."""
    # Look back at most 3 bytes for the lead byte of an unfinished character.
    for back in range(1, min(4, len(buf)) + 1):
        b = buf[-back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return len(buf) if back >= need else len(buf) - back
    return len(buf) if len(buf) >= 4 else 0
