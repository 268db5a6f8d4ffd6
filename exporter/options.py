"""What `python -m exporter` writes (ExportOptions) and those options resolved for one model (ExportPlan).

Defaults follow the model: the cache holds min(266, the decoder's positions), the token budget is what the
cache leaves after the prompt, and the one encoder bucket is the full window. No torch here, so options are
checked before the checkpoint loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import PROMPT_TEMPLATE

PROMPT_LENGTH = len(PROMPT_TEMPLATE)  # decoder positions the prompt takes before the first new token
ONNX_PRECISIONS = ("fp32", "int8")
DEFAULT_CACHE_CAPACITY = 266  # the real model: its 10-piece prompt + 256 new tokens


@dataclass(frozen=True)
class ExportOptions:
    """What to write; None means "follow the model" (see `for_model`)."""

    backends: tuple[str, ...] = ("onnx", "coreml")
    precision: str = "hybrid"  # Core ML: hybrid | fp16 | fp32
    onnx_precision: str = "fp32"  # ONNX: fp32 | int8 (MatMul/Gemm weights INT8, exporter/quantize.py)
    buckets: tuple[int, ...] | None = None  # encoder input frame counts; the largest is the full window
    cache_capacity: int | None = None  # None: min(266, the decoder's positions)
    max_new_tokens: int | None = None  # None: what the cache leaves after the prompt

    def __post_init__(self) -> None:
        unknown = set(self.backends) - {"onnx", "coreml"}
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)} (choose from onnx, coreml)")
        if self.precision not in ("hybrid", "fp16", "fp32"):
            raise ValueError(f"unknown precision {self.precision!r} (hybrid, fp16 or fp32)")
        if self.onnx_precision not in ONNX_PRECISIONS:
            raise ValueError(f"unknown ONNX precision {self.onnx_precision!r} (fp32 or int8)")
        if self.buckets is not None and (not self.buckets or min(self.buckets) < 16):
            raise ValueError(f"bad frame buckets {self.buckets}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.cache_capacity is not None and self.max_new_tokens is not None:
            _check_fit(self.cache_capacity, self.max_new_tokens)

    def for_model(self, positions: int, window_frames: int) -> ExportPlan:
        """These options with every None filled in for a decoder of `positions` positions and a full window of
        `window_frames` feature frames.

        Raises:
            ValueError: a cache larger than the decoder's positions, a budget that does not fit the cache, or a
                largest bucket that is not the full window.
        """
        buckets = self.buckets or (window_frames,)
        if max(buckets) != window_frames:
            raise ValueError(f"the largest bucket must be the full window of {window_frames} frames "
                             f"(got {max(buckets)}): add {window_frames} to --buckets")
        cap = min(DEFAULT_CACHE_CAPACITY, positions) if self.cache_capacity is None else self.cache_capacity
        if cap > positions:
            raise ValueError(f"cache capacity {cap} > the decoder's {positions} positions")
        budget = cap - PROMPT_LENGTH if self.max_new_tokens is None else self.max_new_tokens
        _check_fit(cap, budget)
        note = None
        if self.cache_capacity is None or self.max_new_tokens is None:
            why = f"the decoder's {positions} positions" if cap < DEFAULT_CACHE_CAPACITY else "the default"
            note = (f"cache capacity {cap} ({why if self.cache_capacity is None else 'as given'}), "
                    f"{budget} new tokens per window (capacity − the {PROMPT_LENGTH}-token prompt)")
        return ExportPlan(self.backends, self.precision, tuple(sorted(buckets)), cap, budget, note,
                          self.onnx_precision)


@dataclass(frozen=True)
class ExportPlan:
    """ExportOptions resolved for one model: every value concrete."""

    backends: tuple[str, ...]
    precision: str
    buckets: tuple[int, ...]
    cache_capacity: int
    max_new_tokens: int
    note: str | None  # one line saying what was chosen for the model, or None when all was given
    onnx_precision: str = "fp32"


def _check_fit(cache_capacity: int, max_new_tokens: int) -> None:
    if max_new_tokens < 1 or max_new_tokens > cache_capacity - PROMPT_LENGTH:
        raise ValueError(f"max_new_tokens {max_new_tokens} does not fit a cache of {cache_capacity} with a "
                         f"{PROMPT_LENGTH}-token prompt (at most {cache_capacity - PROMPT_LENGTH})")
