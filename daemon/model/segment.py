"""Segment: one transcribed stretch of audio, the record that transcripts and output formats read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """One transcribed window."""

    start: float  # seconds from the start of the audio
    end: float
    text: str
    language: str
    tokens: tuple[int, ...]  # generated ids, without prompt and EOS
    logprobs: tuple[float, ...]  # log-probability of each generated token
    stop_reason: str  # "eos", "max_new_tokens", "repetition" (loop guard), or "error" (a live final that failed)
