"""Byte-fallback detokenization: whole characters only, token by token, exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.model.tokenizer import StreamingDetokenizer, Tokenizer
from exporter.spm import train_tokenizer

TEXTS = ["turn on the kitchen lights", "set a timer for ten minutes", "apaga la luz del salón por favor",
         "the meeting is on friday", "llama a mamá mañana"] * 8
CJK = ["你好，世界", "今日は良い天気ですね", "안녕하세요 여러분", "混合 on 和 한국어 と 日本語", "𠜎 for"]  # Latin words from the vocabulary


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(train_tokenizer(TEXTS, 320, tmp_path_factory.mktemp("tok") / "tokenizer.model"))


@pytest.mark.parametrize("text", CJK)
def test_cjk_is_byte_pieces_and_round_trips_streaming(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    pieces = [tok.sp.id_to_piece(i) for i in ids]
    cjk_chars = [c for c in text if ord(c) > 0x2E80]
    assert sum(p.startswith("<0x") for p in pieces) == sum(len(c.encode()) for c in cjk_chars)
    d = StreamingDetokenizer(tok)
    out, emitted_at = "", []
    for n, i in enumerate(ids):
        chunk = d.push(i)
        assert "\ufffd" not in chunk  # never half a character
        out += chunk
        emitted_at.append((n, chunk))
    out += d.flush()
    assert out == text.strip()
    assert tok.decode(ids) == text.strip() == tok.sp.decode(ids).strip()
    # Each CJK character appears exactly when its last byte arrives.
    pos = 0
    for c in cjk_chars:
        nbytes = len(c.encode())
        pos = next(k for k in range(pos, len(pieces)) if pieces[k].startswith("<0x"))
        last = pos + nbytes - 1
        assert c in emitted_at[last][1] and all(c not in ch for k, ch in emitted_at[pos:last])
        pos = last + 1


def test_control_pieces_are_dropped_and_leading_space_stripped(tok: Tokenizer) -> None:
    ids = [tok.piece_id("<|en|>"), tok.piece_id("<|pnc|>"), *tok.encode("hola"), tok.piece_id("<|endoftext|>")]
    assert tok.decode(ids) == "hola"


def test_broken_utf8_is_replaced_at_flush(tok: Tokenizer) -> None:
    d = StreamingDetokenizer(tok)
    lead = tok.piece_id("<0xE4>")
    assert d.push(lead) == ""
    assert d.flush() == "\ufffd"


def test_unknown_piece_is_a_clear_error(tok: Tokenizer) -> None:
    from daemon.errors import ConfigError

    with pytest.raises(ConfigError, match="no piece"):
        tok.piece_id("<|xx|>")


def test_bad_tokenizer_file(tmp_path: Path) -> None:
    from daemon.errors import BundleError

    p = tmp_path / "tokenizer.model"
    p.write_bytes(b"not a model")
    with pytest.raises(BundleError, match="cannot load tokenizer"):
        Tokenizer(p)
