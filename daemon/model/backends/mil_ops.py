"""Numpy evaluations of the MIL ops whose coremltools definition has no usable `value_inference`.

coremltools gives nearly every MIL op its numpy semantics (`value_inference`, used for constant folding);
the reference evaluator (coreml_reference.py) uses those. The exporter's programs also use `conv` and `silu`,
which have none, the reductions, whose `value_inference` passes a numpy bool as `keepdims` (numpy 2
rejects it), and `shape`, whose `value_inference` gives the declared shape (symbolic where an input is
flexible). They are written here, following the MIL op definitions (coremltools.converters.mil.mil.ops.defs).

Each evaluation takes the op (for its constant attributes: `op.strides.val`, ...) and the values of its
inputs by name, and returns the output. Like coremltools' own, they compute in the input's dtype where numpy
does (silu: FP16 stays FP16); conv accumulates in float32, as numpy's matmul does for FP16. The caller rounds
every output to the dtype the program declares. Numpy only: the daemon's runtime never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Array = npt.NDArray[Any]
Evaluation = Callable[[Any, dict[str, Any]], Any]  # (op, input values by name) -> output value(s)

# ReductionAxes ops: value_inference is `op(x, axis=axes, keepdims=<numpy bool>)`
_REDUCTIONS: dict[str, Callable[..., Array]] = {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}


def conv_padding(pad_type: str, pad: list[int] | None, kernel: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...], spatial: tuple[int, ...]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, as the MIL `conv` op defines pad_type."""
    if pad_type == "valid":
        return [(0, 0)] * len(kernel)
    if pad_type == "custom":
        assert pad is not None and len(pad) == 2 * len(kernel)
        return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(kernel))]
    if pad_type not in ("same", "same_lower"):
        raise ValueError(f"conv: unknown pad_type {pad_type!r}")
    out = []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)  # output ceil(n / s)
        small, large = total // 2, total - total // 2
        out.append((large, small) if pad_type == "same_lower" else (small, large))
    return out


def conv_nd(x: Array, weight: Array, bias: Array | None, strides: tuple[int, ...], dilations: tuple[int, ...],
            padding: list[tuple[int, int]], groups: int) -> Array:
    """N-d grouped cross-correlation (1 ≤ N ≤ 3), float32 accumulation.

    Args:
        x: (n, C_in, *d_in).
        weight: (C_out, C_in / groups, *K).
        bias: (C_out,) or None.

    Returns:
        float32 (n, C_out, *d_out).
    """
    nsp = x.ndim - 2
    kernel = weight.shape[2:]
    xp = np.pad(x.astype(np.float32), [(0, 0), (0, 0), *padding])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    win = xp
    for i, size in enumerate(span):  # each call appends one window axis: (n, C_in, *d_out_unstrided, *span)
        win = sliding_window_view(win, size, axis=2 + i)
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
               *(slice(None, None, d) for d in dilations))]  # (n, C_in, *d_out, *K)
    n, c_in, c_out = x.shape[0], x.shape[1], weight.shape[0]
    win = win.reshape(n, groups, c_in // groups, *win.shape[2:])  # (n, g, C_in/g, *d_out, *K)
    w = weight.astype(np.float32).reshape(groups, c_out // groups, *weight.shape[1:])  # (g, C_out/g, C_in/g, *K)
    o, k = "ijl"[:nsp], "uvw"[:nsp]
    out: Array = np.einsum(f"ngc{o}{k},gdc{k}->ngd{o}", win, w, optimize=True)  # (n, g, C_out/g, *d_out)
    out = out.reshape(n, c_out, *out.shape[3:])
    if bias is not None:
        out += bias.astype(np.float32).reshape((1, c_out) + (1,) * nsp)
    return out


def conv(op: Any, v: dict[str, Any]) -> Array:
    """MIL `conv` (iOS15/iOS17 definitions)."""
    x, weight = v["x"], v["weight"]
    strides = tuple(int(s) for s in op.strides.val)
    dilations = tuple(int(d) for d in op.dilations.val)
    pad = None if op.pad is None else [int(p) for p in op.pad.val]
    padding = conv_padding(str(op.pad_type.val), pad, tuple(weight.shape[2:]), strides, dilations,
                           tuple(x.shape[2:]))
    return conv_nd(x, weight, v.get("bias"), strides, dilations, padding, int(op.groups.val))


def silu(op: Any, v: dict[str, Any]) -> Array:
    """MIL `silu`: x · sigmoid(x), in x's dtype (as coremltools computes `sigmoid`)."""
    x = v["x"]
    one = x.dtype.type(1)
    return np.asarray(x * (one / (one + np.exp(-x))), dtype=x.dtype)


def reduce(op: Any, v: dict[str, Any]) -> Array:
    """MIL reduce_* over `axes` (all when absent); keep_dims as a Python bool (numpy 2 refuses numpy's)."""
    axes = None if op.axes is None else tuple(int(a) for a in op.axes.val)
    keep = bool(op.keep_dims.val) if op.keep_dims is not None else False
    return np.asarray(_REDUCTIONS[op.op_type](v["x"], axis=axes, keepdims=keep))


def shape(op: Any, v: dict[str, Any]) -> Array:
    """MIL `shape`: the shape of the value at hand (coremltools' returns the declared one, symbolic for a
    flexible input such as FluidAudio v1's attention_mask)."""
    return np.array(np.shape(v["x"]), np.int32)


EVALUATIONS: dict[str, Evaluation] = {"conv": conv, "silu": silu, "shape": shape,
                                      **{name: reduce for name in _REDUCTIONS}}
