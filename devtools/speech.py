"""Speech for tests and benchmarks: espeak-ng sentences as 16 kHz mono float32, clips and spoken programs."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from daemon.audio import SAMPLE_RATE as SR
from exporter.demo import grammar

Audio = npt.NDArray[np.float32]

SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "turn on the kitchen lights please",
    "set a timer for ten minutes", "what is the weather like in barcelona today",
    "remind me to call the dentist at four thirty", "la reunión es el viernes a las tres",
    "apaga la luz del salón", "she sells sea shells by the sea shore", "open the garage door",
    "twenty three degrees and sunny", "play some jazz in the living room", "el tren sale a las ocho y media",
]
GAP_S = 1.5  # silence around each sentence of a program


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Audio:
    """Speech from espeak-ng as 16 kHz mono float32."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return np.asarray(soxr.resample(x, rate, SR), dtype=np.float32)


def speech_clip(seconds: float, seed: int) -> Audio:
    """Speech-like audio of an exact length: espeak sentences back to back, light noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    parts: list[Audio] = []
    while sum(len(p) for p in parts) < n:
        voice = ["en-us", "en-gb", "es", "en-gb-scotland"][int(rng.integers(4))]
        parts.append(espeak(SENTENCES[int(rng.integers(len(SENTENCES)))], voice, int(rng.integers(130, 200)),
                            int(rng.integers(30, 70))))
        parts.append(np.zeros(int(rng.integers(800, 6000)), np.float32))
    x = np.concatenate(parts)[:n] * rng.uniform(0.3, 1.0)
    return (x + rng.normal(0, 0.003, n)).astype(np.float32)


def heldout_sentences(n: int, lang: str = "en") -> list[str]:
    """Held-out sentences of the demo model's grammar (never in its training set), long ones first."""
    return sorted(grammar.demo_heldout(lang), key=len, reverse=True)[:n]


def program(texts: list[str], lang: str = "en") -> tuple[Audio, list[float]]:
    """Sentences spoken by espeak-ng with GAP_S of silence around each; the audio and each sentence's seconds."""
    voice = "en-us" if lang == "en" else "es"
    gap = np.zeros(int(GAP_S * SR), np.float32)
    parts, durations = [gap], []
    for t in texts:
        x = espeak(t, voice, 150) * 0.8
        parts += [x, gap]
        durations.append(len(x) / SR)
    return np.concatenate(parts), durations
