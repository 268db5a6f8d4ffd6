"""Synthetic speech for the demo model: espeak-ng voices, light augmentation, 16 kHz float32 clips."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

# Base voices per language (all ship with the Debian/Ubuntu espeak-ng-data package).
BASE_VOICES: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc"),
    "es": ("es", "es-419"),
}

# Variants (the files in espeak-ng-data/voices/!v) are language independent: each one
# changes pitch range, formants, breathiness or the synthesis engine.  Novelty variants
# (whisper, croak, robots, echo-heavy ones) are left out.
TRAIN_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
    "adam", "belinda", "benjamin", "david", "edward", "Gene", "Lee", "linda", "max",
    "Michael", "Mike", "michel", "paul", "quincy", "rob", "robert", "steph", "travis",
    "victor", "Diogo", "Marco", "Denis", "anika",
)

# Never used for training (in either language), so evaluation on it measures
# generalisation to an unseen speaker timbre.  Both have formant settings that no
# training variant shares.
HELDOUT_VARIANT: dict[str, str] = {"en": "Andrea", "es": "Annie"}

SPEED_RANGE = (120, 200)  # words per minute, inclusive
PITCH_RANGE = (30, 70)  # espeak-ng pitch adjustment 0..99, inclusive
PERTURB_RANGE = (0.88, 1.12)  # training-only resampling factor: scales pitch, formants and tempo together
GAP_RANGE = (0.25, 0.8)  # seconds of silence between the sentences of a multi-sentence clip
SENTENCE_BREAK = "\n"  # separates the sentences of one clip in a text; spoken with a pause, labelled as a space

assert not set(HELDOUT_VARIANT.values()) & set(TRAIN_VARIANTS), "held-out variant used for training"


@dataclass(frozen=True)
class Voice:
    """One espeak-ng speaker setting."""

    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant}"


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH; install it with `apt-get install espeak-ng`")
    return exe


@functools.cache
def available_variants() -> frozenset[str]:
    """Variant names (as accepted after ``+`` in ``-v``) installed with espeak-ng."""
    out = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=True)
    names = set()
    for line in out.stdout.splitlines()[1:]:
        for field in line.split():
            if field.startswith("!v/"):
                names.add(field[3:])
    return frozenset(names)


@functools.cache
def available_voices() -> frozenset[str]:
    """Language voice names accepted by ``-v`` (espeak-ng's Language column)."""
    out = subprocess.run([_espeak(), "--voices"], capture_output=True, text=True, check=True)
    return frozenset(line.split()[1] for line in out.stdout.splitlines()[1:] if len(line.split()) > 1)


def check_voices() -> None:
    """Raise if a configured voice or variant is not installed.

    espeak-ng silently falls back to its default variant for an unknown ``+name``,
    so a typo would otherwise go unnoticed.
    """
    missing = [v for vs in BASE_VOICES.values() for v in vs if v not in available_voices()]
    missing += [v for v in (*TRAIN_VARIANTS, *HELDOUT_VARIANT.values()) if v not in available_variants()]
    if missing:
        raise RuntimeError(f"espeak-ng lacks these voices/variants: {missing}")


def voice_for(lang: str, rng: np.random.Generator, heldout: bool = False) -> Voice:
    """Draw a random voice for ``lang``: base voice, variant, speed and pitch."""
    if lang not in BASE_VOICES:
        raise ValueError(f"unsupported language {lang!r}; expected one of {tuple(BASE_VOICES)}")
    bases = BASE_VOICES[lang]
    base = bases[int(rng.integers(len(bases)))]
    variant = HELDOUT_VARIANT[lang] if heldout else TRAIN_VARIANTS[int(rng.integers(len(TRAIN_VARIANTS)))]
    speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    return Voice(base, variant, speed, pitch)


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return 16 kHz mono float32 audio."""
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    if voice.variant not in available_variants():
        raise RuntimeError(f"espeak-ng has no variant {voice.variant!r}")
    cmd = [_espeak(), "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}) for voice {voice.name}: {err}")
    audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice.name}")
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)


def perturb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation: resample by a random factor and play back at 16 kHz, which moves pitch and formants
    (a crude vocal-tract-length change) so that voices beyond espeak-ng's variants are heard in training."""
    factor = rng.uniform(*PERTURB_RANGE)
    return soxr.resample(x, SAMPLE_RATE, SAMPLE_RATE / factor).astype(np.float32)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random level, leading/trailing silence and white noise; result clipped to [-1, 1]."""
    gain = rng.uniform(0.3, 1.0)
    lead, trail = (int(rng.uniform(0.05, 0.4) * SAMPLE_RATE) for _ in range(2))
    sigma = rng.uniform(0.0, 0.01)
    y = np.concatenate([np.zeros(lead, np.float32), x * gain, np.zeros(trail, np.float32)])
    y += rng.normal(0.0, sigma, y.shape)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


_augment = augment  # make_clip's ``augment`` flag shadows the function name


def make_clip(text: str, lang: str, rng: np.random.Generator, heldout: bool = False,
              augment: bool = True, perturbed: bool = False) -> np.ndarray:
    """Synthesize ``text`` with a random ``lang`` voice, peak-normalised to 0.9, optionally augmented.

    Sentences separated by SENTENCE_BREAK are spoken by the same voice with a random pause between them;
    ``perturbed`` adds speed perturbation (training only).
    """
    voice = voice_for(lang, rng, heldout)
    parts = [synthesize(t, voice) for t in text.split(SENTENCE_BREAK)]
    gaps = [np.zeros(int(rng.uniform(*GAP_RANGE) * SAMPLE_RATE), np.float32) for _ in parts[1:]]
    pieces = [parts[0]]
    for gap, part in zip(gaps, parts[1:], strict=True):
        pieces += [gap, part]
    x = np.concatenate(pieces)
    if perturbed:
        x = perturb(x, rng)
    peak = float(np.abs(x).max())
    if peak > 0:
        x = x * (0.9 / peak)
    return _augment(x, rng) if augment else x.astype(np.float32)


def synthesize_many(items: list[tuple[str, str]], seed: int, heldout: bool,
                    workers: int = 2, augment: bool = True, perturbed: bool = False) -> list[np.ndarray]:
    """Synthesize (text, lang) pairs in parallel; item i uses rng seeded by (seed, i)."""

    def one(i: int) -> np.ndarray:
        text, lang = items[i]
        return make_clip(text, lang, np.random.default_rng([seed, i]), heldout=heldout, augment=augment,
                         perturbed=perturbed)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(one, range(len(items)))
        if len(items) > 50:
            from tqdm import tqdm

            results = tqdm(results, total=len(items), desc="espeak-ng", unit="clip")
        return list(results)
