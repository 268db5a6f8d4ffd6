"""Transcript output formats: text, json (per segment, with tokens and log-probabilities), srt, vtt."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict

from daemon.model.segment import Segment

FORMATS = ("text", "json", "srt", "vtt")


def _clock(seconds: float, sep: str) -> str:
    """HH:MM:SS,mmm (sep ","; srt) or HH:MM:SS.mmm (sep "."; vtt).

    Raises:
        ValueError: for a negative or non-finite time, which no subtitle format can show.
    """
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a subtitle time must be finite and ≥ 0, not {seconds}")
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(segments: Iterable[Segment], fmt: str, source: str = "") -> str:
    """All segments of one file in a format; json is one object {"file", "segments": [...]}."""
    segs = list(segments)
    if fmt == "text":
        sep = "" if segs and segs[0].language in ("ja", "zh") else " "
        return sep.join(s.text for s in segs if s.text).strip() + "\n"
    if fmt == "json":
        rows = [{**asdict(s), "start": round(s.start, 3), "end": round(s.end, 3),
                 "tokens": list(s.tokens), "logprobs": [round(p, 6) for p in s.logprobs]} for s in segs]
        return json.dumps({"file": source, "segments": rows}, ensure_ascii=False) + "\n"
    if fmt == "srt":
        blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
                  for i, s in enumerate((s for s in segs if s.text), 1)]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segs if s.text]
        return "WEBVTT\n\n" + "\n".join(blocks)
    raise ValueError(f"unknown format {fmt!r}")
