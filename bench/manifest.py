"""Evaluation manifests: (audio path, reference text, language) items from JSONL, LibriSpeech or FLEURS.

Three layouts are read, picked by what the path is:

- a ``.jsonl`` file: one JSON object per line with ``audio`` (relative to the manifest's folder, or absolute),
  ``text`` and ``language``; an optional ``id`` (default: the audio file's stem). Blank lines are skipped.
- a LibriSpeech folder (e.g. ``LibriSpeech/test-clean``): every ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt``
  below it, each line ``ID TEXT`` with ``ID.flac`` next to it; language ``en``.
- a FLEURS split ``.tsv`` (e.g. ``fleurs/en_us/test.tsv``, as in the ``google/fleurs`` dataset repository):
  tab-separated, no header, columns id, file name, raw transcription, transcription, words/phonemes,
  number of samples, gender. The audio is ``audio/SPLIT/FILE`` next to the tsv (``data/CONFIG/audio/
  SPLIT.tar.gz`` extracted in place). The reference is the raw transcription (case and punctuation are
  normalized away at scoring time, the same way for the hypothesis). The language is the ``language``
  argument, or else the config folder's two-letter prefix (``en_us`` → en); ``cmn_hans_cn`` needs ``zh``.

A ``language`` argument overrides the language of every item. Errors are one line (`ManifestError`).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import DaemonError


class ManifestError(DaemonError):
    """A manifest is missing, malformed, or names audio that does not exist."""


@dataclass(frozen=True)
class Item:
    """One utterance to transcribe and score."""

    id: str
    audio: Path
    text: str  # the reference, as written in the manifest
    language: str  # the model's language code: en, es, zh, ...


def layout_of(path: str | Path) -> str:
    """The manifest layout of a path: "jsonl", "fleurs" or "librispeech".

    Raises:
        ManifestError: for a missing path or a file that is neither .jsonl nor .tsv.
    """
    p = Path(path)
    if p.is_dir():
        return "librispeech"
    if not p.is_file():
        raise ManifestError(f"{p}: no such manifest file or folder")
    layouts = {".jsonl": "jsonl", ".tsv": "fleurs"}
    if p.suffix not in layouts:
        raise ManifestError(f"{p}: not a manifest (expected a .jsonl file, a FLEURS .tsv or a LibriSpeech folder)")
    return layouts[p.suffix]


def read_manifest(path: str | Path, language: str | None = None) -> list[Item]:
    """Read a manifest of any supported layout; items in manifest order.

    Args:
        path: a .jsonl file, a FLEURS .tsv file, or a folder holding LibriSpeech *.trans.txt files.
        language: overrides every item's language (required for FLEURS configs without a two-letter prefix).

    Raises:
        ManifestError: for a missing path, an unknown layout, a malformed line or a missing audio file.
    """
    readers = {"jsonl": read_jsonl, "fleurs": read_fleurs, "librispeech": read_librispeech}
    return readers[layout_of(path)](Path(path), language)


def read_jsonl(path: Path, language: str | None = None) -> list[Item]:
    """Items of a JSONL manifest (keys audio, text, language; optional id)."""
    items = []
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not isinstance(row.get("text"), str):
            raise ManifestError(f"{path}:{n}: expected an object with string keys audio and text")
        lang = language or row.get("language")
        if not isinstance(lang, str) or not lang:
            raise ManifestError(f"{path}:{n}: no language (add a language key or pass --language)")
        audio = _existing(path.parent / row["audio"], path, n)
        items.append(Item(str(row.get("id", audio.stem)), audio, row["text"], lang))
    return _nonempty(items, path)


def read_librispeech(folder: Path, language: str | None = None) -> list[Item]:
    """Items of every *.trans.txt below a LibriSpeech folder, in sorted file order."""
    items = []
    for trans in sorted(folder.rglob("*.trans.txt")):
        for n, line in enumerate(_lines(trans), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ManifestError(f"{trans}:{n}: expected 'ID TEXT'")
            audio = _existing(trans.parent / f"{uid}.flac", trans, n)
            items.append(Item(uid, audio, text.strip(), language or "en"))
    if not items:
        raise ManifestError(f"{folder}: no LibriSpeech *.trans.txt files with utterances below this folder")
    return items


FLEURS_COLUMNS = 7  # id, file name, raw transcription, transcription, words, n samples, gender


def read_fleurs(tsv: Path, language: str | None = None) -> list[Item]:
    """Items of a FLEURS split .tsv; audio from audio/SPLIT/ next to it."""
    lang = language or _fleurs_language(tsv)
    audio_dir = tsv.parent / "audio" / tsv.stem
    items = []
    with tsv.open(encoding="utf-8", newline="") as f:
        # FLEURS quotes nothing: a '"' in a transcription is text, not a CSV quote.
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) < FLEURS_COLUMNS:
                raise ManifestError(f"{tsv}:{n}: expected {FLEURS_COLUMNS} tab-separated columns, found {len(row)}")
            audio = _existing(audio_dir / row[1], tsv, n)
            items.append(Item(Path(row[1]).stem, audio, row[2], lang))
    return _nonempty(items, tsv)


def _fleurs_language(tsv: Path) -> str:
    """The language of a FLEURS config folder named like en_us or es_419; otherwise ask for --language."""
    m = re.fullmatch(r"([a-z]{2})_[a-z0-9_]+", tsv.resolve().parent.name)
    if m is None:
        raise ManifestError(f"{tsv}: cannot tell the language from the folder name "
                            f"{tsv.resolve().parent.name!r}; pass --language")
    return m.group(1)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _existing(audio: Path, manifest: Path, line: int) -> Path:
    if not audio.is_file():
        raise ManifestError(f"{manifest}:{line}: audio file {audio} does not exist")
    return audio


def _nonempty(items: list[Item], path: Path) -> list[Item]:
    if not items:
        raise ManifestError(f"{path}: the manifest holds no items")
    return items
