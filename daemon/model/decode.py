"""Greedy cache-external decoding, written once against the Backend interface.

The host owns the self-attention cache (n_layers, 1, n_heads, capacity, head_dim); each step feeds one token
at one position with fixed-length additive masks and gets back logits and the new K/V row. The prompt goes in
as one prefill call (the same inputs with T tokens at T positions, T new rows back) where the bundle has one. Cross-attention
K/V come from the encoder once per window and are padded to the decoder's fixed cross length and masked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.errors import ConfigError
from daemon.model.backends import Backend, EncoderOutput
from daemon.model.bundle import Bundle
from daemon.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOptions:
    """What to decode and when to stop."""

    # prompt
    language: str = "en"
    punctuation: bool = True
    # stopping
    max_new_tokens: int | None = None  # None: the bundle's default (256 for the real model)
    ignore_eos: bool = False  # keep going past EOS (benchmarks force a token count this way)
    eos_logit_bias: float | None = None  # added to the EOS logit; None: the bundle's value (0 by default)
    # loop guard (off in the offline reference path; the live daemon turns it on)
    loop_guard: bool = False  # stop when the tail repeats one n-gram over and over (stop_reason "repetition")


@dataclass(frozen=True)
class DecodeResult:
    """Generated tokens (no prompt, no EOS) with the log-probability of each."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    stop_reason: str  # "eos", "max_new_tokens" or "repetition" (loop guard; the repeats are dropped)
    n_steps: int = 0  # decoder calls run (a prompt prefill is one); 0 when nothing was decoded


def build_prompt(bundle: Bundle, tokenizer: Tokenizer, language: str, punctuation: bool) -> list[int]:
    """The decoder prompt for a language, from the manifest's template of piece names.

    Raises:
        ConfigError: for a language whose `<|xx|>` piece the tokenizer lacks.
    """
    if language not in bundle.languages or not tokenizer.has_piece(f"<|{language}|>"):
        known = ", ".join(sorted(bundle.languages))
        raise ConfigError(f"unknown language {language!r}: this model knows {known}")
    pnc = bundle.punctuation_pieces["on" if punctuation else "off"]
    pieces = [p.replace("{language}", language).replace("{punctuation}", pnc) for p in bundle.prompt_template]
    return [tokenizer.piece_id(p) for p in pieces]


def resolve_max_new_tokens(bundle: Bundle, prompt_len: int, requested: int | None) -> int:
    """The token budget of one window; more than the cache can hold is an error, never a silent cut."""
    n = bundle.max_new_tokens if requested is None else requested
    room = bundle.cache_capacity - prompt_len
    if n < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1 (got {n})")
    if n > room:
        raise ConfigError(f"--max-new-tokens {n} exceeds what the decoder cache holds: capacity "
                          f"{bundle.cache_capacity} − prompt {prompt_len} = {room}")
    return n


def cross_inputs(bundle: Bundle, enc: EncoderOutput, n_enc_valid: int, dtype: np.dtype, length: int | None = None
                 ) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic], npt.NDArray[np.float32]]:
    """Cross K/V padded to `length` (default: the decoder's fixed cross length, the full window's), and the
    additive mask of the valid frames."""
    x = bundle.cross_frames if length is None else length
    if enc.cross_k is None or enc.cross_v is None:
        raise ValueError("this encoder output has no cross K/V (FluidAudio's contract: encoder_state_inputs)")
    n_layers, _, n_heads, t, head_dim = enc.cross_k.shape
    if x == t and enc.cross_k.dtype == dtype and enc.cross_v.dtype == dtype:
        k, v = enc.cross_k, enc.cross_v  # a dynamic cross axis: the encoder's own arrays, no copy
    else:
        k = np.zeros((n_layers, 1, n_heads, x, head_dim), dtype)
        v = np.zeros_like(k)
        k[:, :, :, :t] = enc.cross_k
        v[:, :, :, :t] = enc.cross_v
    mask = np.full((1, 1, 1, x), bundle.mask_value, np.float32)
    mask[..., :n_enc_valid] = 0.0
    return k, v, mask


def encoder_state_inputs(bundle: Bundle, enc: EncoderOutput, n_enc_valid: int) -> dict[str, npt.NDArray[np.generic]]:
    """For a decoder that computes cross K/V itself (FluidAudio's contract): the encoder states padded to the
    decoder's fixed cross length, and the additive mask of the valid frames."""
    _, t, width = enc.hidden.shape
    hidden = np.zeros((1, bundle.cross_frames, width), np.float32)
    hidden[:, :t] = enc.hidden
    mask = np.full((1, 1, 1, bundle.cross_frames), bundle.mask_value, np.float32)
    mask[..., :n_enc_valid] = 0.0
    return {"encoder_hidden": hidden, "cross_mask": mask}


def greedy_decode(
    backend: Backend,
    enc: EncoderOutput,
    n_enc_valid: int,
    prompt: list[int],
    max_new_tokens: int,
    options: DecodeOptions,
    on_token: Callable[[int], None] | None = None,
) -> DecodeResult:
    """Feed the prompt (in one prefill call when the backend has one, else one token per step), then pick the
    argmax until EOS or the token budget.

    Args:
        enc: the window's encoder output; n_enc_valid: its valid encoder frames (ceil(L/8) for L frames).
        on_token: called with each generated token id as soon as it is chosen (streaming).
    """
    bundle = backend.bundle
    cap = bundle.cache_capacity
    cache_shape = (bundle.n_layers, 1, bundle.n_heads, cap, bundle.head_dim)
    self_k = np.zeros(cache_shape, backend.cache_dtype)
    self_v = np.zeros(cache_shape, backend.cache_dtype)
    if enc.cross_k is None:  # FluidAudio's contract: the decoder attends to the encoder states in every step
        cross = encoder_state_inputs(bundle, enc, n_enc_valid)
    else:
        cross_length = getattr(backend, "cross_length", None)  # a dynamic cross axis takes the window's own length
        length = None if cross_length is None else cross_length(int(enc.cross_k.shape[3]))
        cross_k, cross_v, cross_mask = cross_inputs(bundle, enc, n_enc_valid, backend.cache_dtype, length)
        cross = {"cross_k": cross_k, "cross_v": cross_v, "cross_mask": cross_mask}
    self_mask = np.full((1, 1, 1, cap), bundle.mask_value, np.float32)
    # The stacked arrays and per-layer views of them (self_k_0 ...): each graph reads the names it declares
    # (a per-layer input costs no copy in the graph; the views cost none here, and they see every write).
    state = {"self_k": self_k, "self_v": self_v, "self_mask": self_mask, **cross}
    state |= layer_views({k: v for k, v in state.items() if k in STACKED}, bundle.n_layers)
    bias = bundle.eos_logit_bias if options.eos_logit_bias is None else options.eos_logit_bias
    eos = bundle.eos_id

    def run(pos: int, ids: list[int]) -> npt.NDArray[np.generic]:
        """ids at positions pos, pos+1, ... into the cache; the logits after the last of them."""
        n = len(ids)
        self_mask[..., pos : pos + n] = 0.0
        feeds = {"input_id": np.array([ids]), "position": np.arange(pos, pos + n), **state}
        out = backend.decoder_prefill(feeds) if n > 1 else backend.decoder_step(feeds)
        self_k[:, :, :, pos : pos + n] = out["new_k"]
        self_v[:, :, :, pos : pos + n] = out["new_v"]
        return out["logits"]

    if len(prompt) > 1 and _prefills(backend, len(prompt)):
        logits, n_steps = run(0, prompt), 1
    else:  # a backend without a prefill graph (bundles exported before it): the prompt step by step
        for pos, t in enumerate(prompt):
            logits = run(pos, [t])
        n_steps = len(prompt)
    tokens: list[int] = []
    logprobs: list[float] = []
    stop = "max_new_tokens"
    while True:
        token, logprob = _pick(logits.reshape(-1), eos, bias, options.ignore_eos)
        if token == eos and not options.ignore_eos:
            stop = "eos"
            break
        tokens.append(token)
        logprobs.append(logprob)
        if on_token is not None:
            on_token(token)
        if options.loop_guard and (keep := repetition_cut(tokens)) is not None:
            del tokens[keep:], logprobs[keep:]
            stop = "repetition"
            break
        if len(tokens) == max_new_tokens:
            break
        logits = run(len(prompt) + len(tokens) - 1, [token])
        n_steps += 1
    if stop == "max_new_tokens" and not options.ignore_eos and max_new_tokens >= bundle.max_new_tokens:
        log.warning("a window reached the token cap (%d new tokens after the %d-token prompt; the decoder holds "
                    "%d positions) before the end of its transcript: the text is cut short", max_new_tokens,
                    len(prompt), cap)
    return DecodeResult(tuple(tokens), tuple(logprobs), stop, n_steps)


STACKED = ("self_k", "self_v", "cross_k", "cross_v")  # (n_layers, ...) arrays a graph may take per layer


def layer_views(arrays: dict[str, npt.NDArray[np.generic]], n_layers: int) -> dict[str, npt.NDArray[np.generic]]:
    """name_i -> arrays[name][i] for every layer i: views, no copies."""
    return {f"{name}_{i}": a[i] for name, a in arrays.items() for i in range(n_layers)}


def _prefills(backend: Backend, n_tokens: int) -> bool:
    """Whether the backend feeds n_tokens in one call (a Backend of a bundle with a prefill graph; wrappers
    and adapters that only step fall back to one token per step)."""
    accepts = getattr(backend, "prefill_accepts", None)
    return bool(accepts is not None and accepts(n_tokens))


LOOP_MIN_REPEATS = 4  # an n-gram seen this many times in a row at the end ...
LOOP_MIN_TOKENS = 12  # ... covering at least this many tokens is a loop, not speech


def repetition_cut(tokens: list[int], max_n: int = 8) -> int | None:
    """If the tail of `tokens` is one n-gram repeated in a loop, the length that keeps a single copy."""
    for n in range(1, max_n + 1):
        reps = max(LOOP_MIN_REPEATS, -(-LOOP_MIN_TOKENS // n))
        if len(tokens) < n * reps:
            continue
        gram = tokens[-n:]
        if all(tokens[-(k + 1) * n : len(tokens) - k * n] == gram for k in range(1, reps)):
            start = len(tokens) - reps * n
            while start >= n and tokens[start - n : start] == gram:  # walk back to the loop's first copy
                start -= n
            return start + n
    return None


def _pick(logits: npt.NDArray[np.generic], eos: int, eos_bias: float, ignore_eos: bool) -> tuple[int, float]:
    """Argmax token and its log-probability (log-softmax in float64 over the adjusted logits)."""
    z = logits.astype(np.float64)
    if eos_bias:
        z[eos] += eos_bias
    if ignore_eos:
        z[eos] = -np.inf
    token = int(np.argmax(z))
    m = z.max()
    logprob = float(z[token] - m - np.log(np.exp(z - m).sum()))
    return token, logprob
