"""Live transcripts: one JSON line per final, appended and flushed as it happens; and export to srt/vtt/text."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from daemon.errors import AudioError, ConfigError
from daemon.model.segment import Segment
from daemon.output.formats import render


class TranscriptWriter:
    """Appends finals to DIR/transcript-YYYYmmdd-HHMMSS.jsonl, flushing every line."""

    def __init__(self, folder: str | Path) -> None:
        d = Path(folder)
        try:
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / f"transcript-{datetime.now():%Y%m%d-%H%M%S}.jsonl"
            self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot write transcripts to {folder}: {e}") from e

    def __call__(self, message: dict[str, Any]) -> None:
        if message.get("type") != "final" or self._fh is None:
            return
        self._fh.write(json.dumps(message, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_finals(path: str | Path) -> list[Segment]:
    """Finals of a JSONL transcript as Segments (malformed lines are an error naming the line)."""
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such transcript file")
    segs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if d.get("type", "final") != "final":
                continue
            segs.append(Segment(float(d["start"]), float(d["end"]), str(d["text"]), str(d.get("language", "")),
                                (), (), str(d.get("stop_reason", ""))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}:{n}: not a transcript line ({e})") from e
    return segs


def export_transcript(path: str | Path, fmt: str) -> str:
    return render(read_finals(path), fmt, source=str(path))
