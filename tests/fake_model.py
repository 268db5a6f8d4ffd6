"""A scripted model and a fake tokenizer for the caption engine's tests (no model files, no torch), and the
synthetic audio they hear: loud frames are speech, zeros are silence."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from daemon.live.config import DaemonConfig
from daemon.live.engine import CaptionEngine
from daemon.model.decode import DecodeResult

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()
SR = 16000
FRAME = 480


class FakeTokenizer:
    """Words ↔ ids over a growing vocabulary, and the prompt pieces build_prompt asks for."""

    PIECES = ("<|en|>", "<|es|>", "<|pnc|>", "<|nopnc|>", "<|startoftranscript|>")

    def __init__(self) -> None:
        self.vocab: list[str] = list(self.PIECES)

    def has_piece(self, piece: str) -> bool:
        return piece in self.vocab

    def piece_id(self, piece: str) -> int:
        return self.vocab.index(piece)

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab.append(w)
            ids.append(self.vocab.index(w))
        return ids

    def decode(self, ids: tuple[int, ...]) -> str:
        return " ".join(self.vocab[i] for i in ids)


@dataclass
class ScriptedModel:
    """Stands in for a Transcriber: decoding returns the first len(audio) / 0.5 s words of WORDS."""

    delay: float = 0.0
    jitter_last: bool = True  # the last word flickers between decodes
    calls: list[int] = field(default_factory=list)
    sample_rate: int = SR
    features: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(sample_rate=SR, hop_length=160))
    bundle: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(
        languages={"en": 0, "es": 1}, punctuation_pieces={"on": "<|pnc|>", "off": "<|nopnc|>"},
        prompt_template=("<|startoftranscript|>", "<|{language}|>", "{punctuation}"),
        features=SimpleNamespace(sample_rate=SR, hop_length=160), max_window_seconds=35.0,
        split_search_seconds=5.0, split_window_samples=1600, max_new_tokens=256))
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def transcribe_window(self, audio: np.ndarray, options: object) -> tuple[list[int], DecodeResult]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            self.calls.append(len(audio))
            n = max(1, min(len(WORDS), len(audio) // 8000))
            words = WORDS[:n]
            if self.jitter_last and len(self.calls) % 2:
                words = [*words[:-1], words[-1].upper()]
            return [], DecodeResult(tuple(self.tokenizer.encode(" ".join(words))), (), "eos")
        finally:
            with self._lock:
                self.in_flight -= 1


def loud(frame: bytes, rate: int) -> bool:
    """A stand-in for webrtcvad: the test's tones are speech, silence is not."""
    return bool(np.abs(np.frombuffer(frame, "<i2")).mean() > 300)


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def frames(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def engine_for(model: ScriptedModel, events: list) -> CaptionEngine:
    return CaptionEngine(DaemonConfig(), model, events.append, is_speech=loud)
