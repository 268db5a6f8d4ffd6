"""Text normalization per language and corpus WER/CER with jiwer.

Both the reference and the hypothesis go through `normalize(text, language)` before scoring:

1. Unicode NFKC (full-width Latin and digits become ASCII, ligatures split, composed accents stay composed:
   "canción" keeps its "ó"), then lower case.
2. Apostrophes (' ’ ʼ) are deleted: "don't" → "dont", "l'homme" → "lhomme".
3. Hyphens and dashes (Unicode category Pd): English → a space ("twenty-three" → "twenty three", since
   English references write compounds both ways); every other language → deleted ("e-mail" → "email").
4. Every other punctuation character (Unicode category P*: . , ; : ! ? ¿ ¡ « » " ( ) 。 、 ...) → a space.
   Symbols ($ % € +) and digits are kept: "3" and "three" differ (no number normalization).
5. Whitespace runs become one space; leading and trailing spaces go.

Scores are corpus-level (total edits / total reference words or characters), computed by jiwer:
WER on the normalized words; CER on the normalized characters, spaces included. For zh, ja and ko the score
is CER on the characters without spaces and WER is not reported (None): these references are not written
as space-separated words, or (Korean) their spacing is too inconsistent to score.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import jiwer

CER_LANGUAGES = frozenset({"zh", "ja", "ko"})  # scored on characters without spaces, WER not reported
_APOSTROPHES = frozenset("'\u2019\u02bc")  # ' ’ ʼ
_SPACES = re.compile(r"\s+")


def normalize(text: str, language: str) -> str:
    """The text as it is scored: NFKC, lower case, punctuation stripped, whitespace collapsed (see above)."""
    dash = " " if language == "en" else ""
    out = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        cat = unicodedata.category(ch)
        if ch in _APOSTROPHES:
            continue
        if cat == "Pd":
            out.append(dash)
        elif cat.startswith("P"):
            out.append(" ")
        else:
            out.append(ch)
    text = _SPACES.sub(" ", "".join(out)).strip()
    return text.replace(" ", "") if language in CER_LANGUAGES else text


def score(refs: list[str], hyps: list[str], language: str) -> dict[str, Any]:
    """Corpus WER and CER of hypotheses against references, both normalized for `language`.

    Returns:
        wer and ref_words (None for zh/ja/ko), cer, ref_chars, metric ("wer" or "cer": the headline number),
        and the word (or, for zh/ja/ko, character) substitutions, deletions and insertions.

    Raises:
        ValueError: when refs and hyps differ in length or are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("nothing to score")
    r = [normalize(t, language) for t in refs]
    h = [normalize(t, language) for t in hyps]
    chars = jiwer.process_characters(r, h)
    cer_only = language in CER_LANGUAGES
    words = None if cer_only else jiwer.process_words(r, h)
    edits = chars if words is None else words
    return {
        "wer": None if words is None else words.wer,
        "cer": chars.cer,
        "metric": "cer" if cer_only else "wer",
        "ref_words": None if cer_only else sum(len(t.split()) for t in r),
        "ref_chars": sum(len(t) for t in r),
        "substitutions": edits.substitutions,
        "deletions": edits.deletions,
        "insertions": edits.insertions,
    }
