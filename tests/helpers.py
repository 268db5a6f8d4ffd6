"""Shared test helpers: espeak-ng speech, the transformers reference, and tiny bundles."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import soundfile as sf
import soxr

SR = 16000
PROMPT_PIECES = ["\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "<|{l}|>",
                 "<|{l}|>", "{p}", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>"]

SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "turn on the kitchen lights please",
    "set a timer for ten minutes", "what is the weather like in barcelona today",
    "remind me to call the dentist at four thirty", "la reunión es el viernes a las tres",
    "apaga la luz del salón", "she sells sea shells by the sea shore", "open the garage door",
    "twenty three degrees and sunny", "play some jazz in the living room", "el tren sale a las ocho y media",
]


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speech from espeak-ng as 16 kHz mono float32."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, rate, SR).astype(np.float32)


def speech_clip(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio of an exact length: espeak sentences back to back, light noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < n:
        voice = ["en-us", "en-gb", "es", "en-gb-scotland"][int(rng.integers(4))]
        parts.append(espeak(SENTENCES[int(rng.integers(len(SENTENCES)))], voice, int(rng.integers(130, 200)),
                            int(rng.integers(30, 70))))
        parts.append(np.zeros(int(rng.integers(800, 6000)), np.float32))
    x = np.concatenate(parts)[:n] * rng.uniform(0.3, 1.0)
    return (x + rng.normal(0, 0.003, n)).astype(np.float32)


def prompt_ids(sp, language: str, punctuation: bool) -> list[int]:
    """The reference prompt (transformers' get_decoder_prompt_ids), built here independently by piece name."""
    pnc = "<|pnc|>" if punctuation else "<|nopnc|>"
    return [sp.piece_to_id(p.replace("{l}", language).replace("{p}", pnc)) for p in PROMPT_PIECES]


def hf_greedy(model, fe, audio: np.ndarray, prompt: list[int], max_new_tokens: int, eos: int
              ) -> tuple[list[int], list[float]]:
    """transformers generate(num_beams=1, do_sample=False): generated ids without EOS, and their log-probs."""
    import torch

    f = fe(audio, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(input_features=f["input_features"], attention_mask=f["attention_mask"],
                             decoder_input_ids=torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, return_dict_in_generate=True, output_logits=True)
    seq = out.sequences[0, len(prompt):].tolist()
    logp = torch.log_softmax(torch.stack(out.logits)[:, 0].double(), dim=-1)
    tokens, lps = [], []
    for i, t in enumerate(seq):
        if t == eos:
            break
        tokens.append(t)
        lps.append(float(logp[i, t]))
    return tokens, lps
