"""Live transcripts: one JSON line per final, appended as it happens; and export to srt/vtt/text.

Crash safety: each line goes to the file in one os.write on a descriptor opened O_APPEND, so a `kill -9` can
never leave a line with another line's bytes inside it or half a line before a whole one: at most the final
being written is lost. (A buffered file object would split a line longer than its buffer into two writes.) The
kernel copies a write page by page and stops at a fatal signal, so the line in flight can be left as an
unterminated fragment at the very end of the file; `read_finals` skips such a fragment with a warning. O_APPEND
puts every write at the end of the file, and a restart opens a new file (O_EXCL), so nothing is ever
overwritten. Two daemons pointed at one folder, even started in the same second, never share a file: the name
carries the process id, and O_EXCL picks another name if it is taken. Transcripts are private: the folder is created 0700, the files 0600.
"""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.errors import AudioError, ConfigError
from daemon.model.segment import Segment
from daemon.output.formats import render

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def _create(folder: Path) -> tuple[Path, int]:
    """A new transcript file in `folder` (never one that exists): its path and an O_APPEND descriptor."""
    stem = f"transcript-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    for n in range(1000):
        path = folder / (f"{stem}.jsonl" if n == 0 else f"{stem}-{n}.jsonl")
        try:
            return path, os.open(path, flags, FILE_MODE)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free transcript name for {stem} in {folder}")


class TranscriptWriter:
    """Appends finals to DIR/transcript-YYYYmmdd-HHMMSS-PID.jsonl, one os.write per line."""

    def __init__(self, folder: str | Path) -> None:
        d = Path(folder)
        try:
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self.path, fd = _create(d)
        except OSError as e:
            raise ConfigError(f"cannot write transcripts to {folder}: {e}") from e
        self._fd: int | None = fd

    def __call__(self, message: dict[str, Any]) -> None:
        if message.get("type") != "final" or self._fd is None:
            return
        data = (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (rare: a signal, a nearly full disk): finish the line
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)  # the last lines survive a power cut after a clean stop
            except OSError:
                pass
            os.close(fd)


def _segment(d: Any) -> Segment | None:
    """A transcript line's dict as a Segment; None for lines of other types."""
    if not isinstance(d, dict):
        raise ValueError("a line must be a JSON object")
    if d.get("type", "final") != "final":
        return None
    start, end = float(d["start"]), float(d["end"])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise ValueError(f"times must be finite with 0 ≤ start ≤ end, not start={start} end={end}")
    return Segment(start, end, str(d["text"]), str(d.get("language", "")), (), (), str(d.get("stop_reason", "")))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def read_finals(path: str | Path) -> list[Segment]:
    """Finals of a JSONL transcript as Segments (a malformed line is an error naming the line).

    Raises:
        AudioError: the file does not exist.
        ConfigError: the file is not UTF-8 text, or a line is not a final with sane times.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: no such transcript file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a JSONL transcript (not UTF-8 text at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the transcript ({e.strerror or e})") from e
    segs = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if n == len(lines) and not text.endswith("\n") and not _parses(line):
            log.warning("%s:%d: the last line is cut short (the daemon was killed while writing it); skipped",
                        path, n)
            break
        try:
            seg = _segment(json.loads(line))
        except KeyError as e:
            raise ConfigError(f"{path}:{n}: not a transcript line (no {e} field)") from e
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ConfigError(f"{path}:{n}: not a transcript line ({e})") from e
        if seg is not None:
            segs.append(seg)
    return segs


def export_transcript(path: str | Path, fmt: str) -> str:
    return render(read_finals(path), fmt, source=str(path))
