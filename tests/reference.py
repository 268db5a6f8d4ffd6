"""The transformers reference for parity tests: the decoder prompt built independently, and greedy generate()."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.audio import SAMPLE_RATE as SR

N_CLIPS = 20  # the parity clips: 20 lengths from 0.5 s to the full 35 s window
MAX_NEW = 24  # tokens generated per clip
LANGS = ("en", "es", "fr", "de", "ja")  # the prompt languages the clips cycle through


def clip_lengths() -> list[float]:
    """Seconds of each parity clip (fixed seed), the shortest and the full window included."""
    rng = np.random.default_rng(3)
    return sorted([0.5, 35.0, *list(rng.uniform(0.5, 35.0, N_CLIPS - 2))])


PROMPT_PIECES = ["\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "<|{l}|>",
                 "<|{l}|>", "{p}", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>"]


def prompt_ids(sp: Any, language: str, punctuation: bool) -> list[int]:
    """The reference prompt (transformers' get_decoder_prompt_ids), built here independently by piece name."""
    pnc = "<|pnc|>" if punctuation else "<|nopnc|>"
    return [sp.piece_to_id(p.replace("{l}", language).replace("{p}", pnc)) for p in PROMPT_PIECES]


def hf_greedy(model: Any, fe: Any, audio: npt.NDArray[np.float32], prompt: list[int], max_new_tokens: int,
              eos: int) -> tuple[list[int], list[float]]:
    """transformers generate(num_beams=1, do_sample=False): generated ids without EOS, and their log-probs."""
    import torch  # only the slow parity tests call this

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
