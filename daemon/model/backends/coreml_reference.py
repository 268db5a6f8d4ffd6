"""The Core ML reference evaluator: an .mlpackage's ML Program run op by op in numpy, on any OS (slow).

Linux has no Core ML runtime, but coremltools reads a saved package back into a MIL program
(`milproto.load`), and nearly every MIL op carries its numpy semantics: `value_inference` (used for constant
folding) and, for the `constexpr_*` weight ops, `materialized_val_inference`. This session evaluates the
program's ops in order with those, and with mil_ops.py for the few that have none. Every op's result is
rounded to the dtype the program declares for it, so FP16 programs compute in FP16 between ops and FP16
overflow or precision loss shows up here as it would on a Mac (within numpy's rounding, not Core ML's kernels).

It is the `coreml-reference` backend: it reads the bundle's `coreml` files, for checking a bundle on a machine
without Core ML. It needs coremltools (the `coreml` extra), never torch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from daemon.errors import BackendError
from daemon.model.bundle import GraphSpec

from .base import Array
from .mil_ops import EVALUATIONS

INSTALL = "pip install 'cohere-transcribe-daemon[coreml]'"
MAIN = "main"


def check_available() -> None:
    """Raise BackendError unless coremltools can be imported."""
    _coremltools()


def _coremltools() -> Any:
    try:
        logging.getLogger("coremltools").setLevel(logging.ERROR)  # its import warns about torch and the Mac proxies
        import coremltools
    except ImportError as e:
        raise BackendError(f"the coreml-reference backend needs coremltools: {INSTALL}") from e
    return coremltools


def package_of(path: Path) -> Path:
    """The .mlpackage to evaluate for a model file: itself, or for a compiled .mlmodelc (which holds no MIL
    program coremltools reads) the .mlpackage of the same name beside it.

    Raises:
        BackendError: a .mlmodelc without its .mlpackage.
    """
    if path.suffix != ".mlmodelc":
        return path
    package = path.with_suffix(".mlpackage")
    if not package.is_dir():
        raise BackendError(f"the coreml-reference backend evaluates .mlpackage files; {path.parent} has only the "
                           f"compiled {path.name} (run it on a Mac with --backend coreml)")
    return package


def package_spec(path: Path) -> Any:
    """The protobuf spec of an .mlpackage (its declared inputs and outputs; weights are not read).

    Raises:
        BackendError: no coremltools, or not a readable package.
    """
    _coremltools()
    from coremltools.models.utils import load_spec

    try:
        return load_spec(str(path))
    except Exception as e:  # coremltools raises plain Exception for unreadable packages
        raise BackendError(f"cannot read {path}: {' '.join(str(e).split())}") from e


def load_program(path: Path) -> Any:
    """The MIL program of an .mlpackage (every function), read with coremltools' milproto loader.

    Raises:
        BackendError: not a readable ML Program package.
    """
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise BackendError(f"{path} is not an ML Program (it is {spec.WhichOneof('Type')})")
        return load(spec, spec.specificationVersion, model.weights_dir)
    except BackendError:
        raise
    except Exception as e:  # coremltools raises plain Exception/ValueError for unreadable packages
        raise BackendError(f"cannot read {path}: {e}") from e


def evaluation_of(op: Any) -> str | None:
    """How the evaluator computes an op: "const", "mil_ops", "materialized_val_inference", "value_inference",
    or None when it cannot."""
    from coremltools.converters.mil.mil.operation import Operation

    cls = type(op)
    if op.op_type == "const":
        return "const"
    if op.op_type in EVALUATIONS:
        return "mil_ops"
    if op.op_type.startswith("constexpr_"):
        return "materialized_val_inference" if hasattr(cls, "materialized_val_inference") else None
    if cls.value_inference is not Operation.value_inference and not op.blocks:
        return "value_inference"
    return None


def missing_evaluations(function: Any) -> set[str]:
    """Op types of a MIL function the evaluator cannot compute."""
    return {op.op_type for op in function.operations if evaluation_of(op) is None}


def _np_dtype(var: Any) -> np.dtype[Any]:
    from coremltools.converters.mil.mil import types

    dtype: np.dtype[Any] = np.dtype(types.nptype_from_builtin(var.dtype))
    return dtype


class CoreMLReferenceSession:
    """One function of an .mlpackage (`main`, or the one GraphSpec names), evaluated op by op.

    `seconds` accumulates the time spent per op type (for the benchmark of how slow this is).
    """

    def __init__(self, graph: GraphSpec) -> None:
        name = getattr(graph, "function", None) or MAIN  # GraphSpec.function names a multifunction package's
        self.path = package_of(graph.path)
        self.function_name = name
        program = load_program(self.path)
        if name not in program.functions:
            raise BackendError(f"{self.path} has no function {name!r} (it has: "
                               f"{', '.join(sorted(program.functions))})")
        self._fn = program.functions[name]
        missing = missing_evaluations(self._fn)
        if missing:
            raise BackendError(f"{self.path} ({name}): no reference evaluation for MIL ops {', '.join(sorted(missing))}")
        self._ops = [op for op in self._fn.operations if evaluation_of(op) not in ("const",
                                                                                    "materialized_val_inference")]
        self._weights = self._materialize()
        self._last_use = self._last_uses()
        self._lock = threading.Lock()  # run() sets the values of the program's own Vars, one op at a time
        self.seconds: dict[str, float] = {}

    def _materialize(self) -> dict[str, Any]:
        """Values of the const and constexpr ops (weights dequantized once, in their declared dtype)."""
        values: dict[str, Any] = {}
        for op in self._fn.operations:
            how = evaluation_of(op)
            if how == "const":
                values[op.outputs[0].name] = op.outputs[0].val
            elif how == "materialized_val_inference":
                out = op.outputs[0]
                values[out.name] = np.asarray(op.materialized_val_inference()).astype(_np_dtype(out))
        return values

    def _last_uses(self) -> dict[str, int]:
        """For each computed value, the index of the last op that reads it (it is dropped after that op)."""
        last: dict[str, int] = {}
        for i, op in enumerate(self._ops):
            for var in _flat(op.inputs.values()):
                last[var.name] = i
        for var in self._fn.outputs:
            last[var.name] = len(self._ops)
        return last

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        env: dict[str, Any] = {}
        for name, var in self._fn.inputs.items():
            if name not in feeds:
                raise BackendError(f"{self.path} ({self.function_name}): no value for input {name!r}")
            env[name] = np.asarray(feeds[name]).astype(_np_dtype(var))
        with self._lock, np.errstate(all="ignore"):  # FP16 overflow gives inf, as on the device, not a warning
            for i, op in enumerate(self._ops):
                t0 = perf_counter()
                self._evaluate(op, env)
                self.seconds[op.op_type] = self.seconds.get(op.op_type, 0.0) + perf_counter() - t0
                for var in _flat(op.inputs.values()):
                    if self._last_use.get(var.name) == i and var.name not in self._weights:
                        env.pop(var.name, None)
        return {var.name: np.asarray(env[var.name]) for var in self._fn.outputs}

    def _evaluate(self, op: Any, env: dict[str, Any]) -> None:
        """Compute one op from env's values; store its outputs in env, rounded to their declared dtypes."""
        values: dict[str, Any] = {}
        bound = []
        try:
            for key, arg in op.inputs.items():
                group = arg if isinstance(arg, (list, tuple)) else (arg,)
                vals = [env[v.name] if v.name in env else self._weights.get(v.name, v.val) for v in group]
                for var, val in zip(group, vals, strict=True):
                    # a computed value or a weight: show it to value_inference (also in place of a symbolic
                    # value, such as the shape of a flexible input)
                    if var.sym_val is None or var.name in env:
                        sym = var.sym_type()
                        sym.val = val
                        bound.append((var, var._sym_val))
                        var._sym_val = sym
                values[key] = vals if isinstance(arg, (list, tuple)) else vals[0]
            own = EVALUATIONS.get(op.op_type)
            result = own(op, values) if own is not None else op.value_inference()
        finally:
            for var, before in bound:
                var._sym_val = before
        results = result if isinstance(result, (list, tuple)) else (result,)
        if len(results) != len(op.outputs) or any(r is None for r in results):
            raise BackendError(f"{self.path}: MIL op {op.op_type} ({op.name}) gave no value")
        for var, r in zip(op.outputs, results, strict=True):
            value = np.asarray(r).astype(_np_dtype(var), copy=False)
            if not _fits(value.shape, var.shape):
                raise BackendError(f"{self.path}: MIL op {op.op_type} ({op.name}) gave shape {value.shape}, "
                                   f"the program declares {tuple(var.shape)}")
            env[var.name] = value[()] if value.ndim == 0 else value  # scalars as numpy scalars, as MIL holds them


def _fits(shape: tuple[int, ...], declared: Any) -> bool:
    """A value's shape against the program's declaration, whose flexible dimensions are symbols (any size)."""
    return len(shape) == len(declared) and all(not isinstance(d, (int, np.integer)) or int(d) == s
                                               for s, d in zip(shape, declared, strict=True))


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for arg in args:
        out.extend(arg if isinstance(arg, (list, tuple)) else (arg,))
    return out
