"""Core ML sessions (macOS 15+): each .mlpackage compiled once to .mlmodelc, cached by checksum, loaded by function.

A compiled model given as such (FluidInference's published .mlmodelc files) is loaded as it is, compiling nothing.

The first start with a bundle compiles each of its Core ML packages (`coremltools.models.utils.compile_model`)
into `<cache>/coreml/<sha256 of the package>/<name>.mlmodelc` (<cache>: see daemon.model.checksums.cache_file);
later starts load the compiled model from there and compile nothing. A re-exported package has a new checksum,
so it gets a new folder and is compiled again. Each graph loads one function of its package (the encoder is one
multifunction package, a function per frame bucket) on the selected compute units.

Compiling and loading go through a `CoreMLRuntime`; `CoreMLTools` is the real one (macOS only), and tests on
any machine pass a fake one to check the caching, the compute units and the function names.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from daemon.errors import BackendError, ConfigError
from daemon.model.bundle import Bundle, GraphSpec
from daemon.model.checksums import cache_file, sha256_of

from .base import Array, Backend, Session
from .fluidaudio import backend_class

log = logging.getLogger(__name__)

# --compute-units value -> coremltools.ComputeUnit member
COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU", "cpu_only": "CPU_ONLY"}
DEFAULT_COMPUTE_UNITS = "all"
COMPILED_SUFFIX = ".mlmodelc"


class CoreMLRuntime(Protocol):
    """What the cache needs from Core ML: compile a package, load a compiled model's function."""

    def compile(self, package: Path, destination: Path) -> None:
        """Compile `package` (.mlpackage) into `destination` (a .mlmodelc folder that does not exist yet)."""
        ...

    def load(self, compiled: Path, compute_units: str, function: str | None) -> Session:
        """Load one function (None: the default one) of a compiled model on COMPUTE_UNITS[compute_units]."""
        ...


class CoreMLTools:
    """The real runtime: coremltools' bindings to the Core ML framework (macOS only)."""

    def compile(self, package: Path, destination: Path) -> None:
        from coremltools.models.utils import compile_model

        compile_model(str(package), str(destination))

    def load(self, compiled: Path, compute_units: str, function: str | None) -> Session:
        import coremltools as ct

        return _Predictor(ct.models.CompiledMLModel(str(compiled), compute_unit(compute_units, ct),
                                                    function_name=function))


class _Predictor:
    """A loaded Core ML model as a Session."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        out = self._model.predict(feeds)
        return {k: np.asarray(v) for k, v in out.items()}


def compute_unit(name: str, ct: Any) -> Any:
    """The coremltools.ComputeUnit for a --compute-units value (`ct`: the coremltools module)."""
    return getattr(ct.ComputeUnit, COMPUTE_UNITS[name])


def check_compute_units(name: str) -> str:
    """Raise ConfigError unless `name` is a --compute-units value."""
    if name not in COMPUTE_UNITS:
        raise ConfigError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, not {name!r}")
    return name


def check_available(target: str | None = None, system: str | None = None, mac_version: str | None = None) -> None:
    """Raise BackendError unless this machine can run Core ML predictions of a bundle built for `target`
    (its minimum_deployment_target, e.g. "macOS15"). `system` and `mac_version` default to this machine's."""
    check_macos(target, system, mac_version)
    try:
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        import coremltools  # noqa: F401
    except ImportError as e:
        raise BackendError("the coreml backend needs coremltools (pip install 'coremltools==9.0')") from e


def check_macos(target: str | None, system: str | None = None, mac_version: str | None = None) -> None:
    """Raise BackendError off macOS, or on a macOS older than `target` ("macOS15"; None: no minimum)."""
    system = platform.system() if system is None else system
    if system != "Darwin":
        raise BackendError(f"the coreml backend runs only on macOS (this is {system}); use --backend onnx")
    mac_version = platform.mac_ver()[0] if mac_version is None else mac_version
    need, have = _version(target or ""), _version(mac_version)
    if need and have and have < need:
        raise BackendError(f"the bundle's Core ML files need macOS {'.'.join(map(str, need))} or later, this Mac "
                           f"runs macOS {mac_version}; update macOS or use --backend onnx")


def _version(text: str) -> tuple[int, ...]:
    """(15,) for "macOS15", (14, 6, 1) for "14.6.1", () when there is no version in it."""
    m = re.search(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in m.group().split(".")) if m else ()


def compile_cache_dir() -> Path:
    """Where compiled models are kept: the user's cache folder for this app, then coreml/."""
    return cache_file().parent / "coreml"


class CompileCache:
    """Compiled models by package checksum: compile on a miss, reuse on a hit (also across restarts)."""

    def __init__(self, runtime: CoreMLRuntime, root: Path | None = None) -> None:
        self.runtime = runtime
        self.root = compile_cache_dir() if root is None else root

    def path(self, package: Path, sha256: str | None) -> Path:
        """Where the .mlmodelc of `package` is kept (sha256: its checksum from the manifest, None: hash it)."""
        return self.root / (sha256 or sha256_of(package)) / (package.stem + COMPILED_SUFFIX)

    def has(self, package: Path, sha256: str | None) -> bool:
        """Whether an earlier start compiled this package."""
        return self.path(package, sha256).is_dir()

    def compiled(self, package: Path, sha256: str | None) -> Path:
        """The .mlmodelc of `package`, compiled now if no earlier start compiled this checksum."""
        dest = self.path(package, sha256)
        if dest.is_dir():
            log.debug("Core ML: reusing %s", dest)
            return dest
        log.info("Core ML: compiling %s (once per model file; later starts reuse %s)", package.name, dest.parent)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(dir=self.root, prefix=".compiling-"))
        except OSError as e:  # an unwritable cache: compile for this run only
            log.warning("Core ML: cannot write the compile cache %s (%s); compiling for this run only", self.root, e)
            work = Path(tempfile.mkdtemp(prefix="cohere-coreml-"))
            self.runtime.compile(package, work / dest.name)
            return work / dest.name
        try:
            self.runtime.compile(package, work / dest.name)
            dest.parent.mkdir(exist_ok=True)
            try:
                os.replace(work / dest.name, dest)  # atomic: a crash never leaves a half-written cache entry
            except OSError:
                if not dest.is_dir():  # else another process finished first: use its copy
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dest

    def forget(self, package: Path, sha256: str | None) -> None:
        """Remove a package's compiled model."""
        shutil.rmtree(self.path(package, sha256).parent, ignore_errors=True)


class CoreMLLoader:
    """Loads a bundle's graphs for Backend: compiled through the cache, one function each, on the compute units."""

    def __init__(self, compute_units: str = DEFAULT_COMPUTE_UNITS, runtime: CoreMLRuntime | None = None,
                 cache_root: Path | None = None) -> None:
        self.compute_units = check_compute_units(compute_units)
        self.runtime = runtime or CoreMLTools()
        self.cache = CompileCache(self.runtime, cache_root)

    def __call__(self, graph: GraphSpec) -> Session:
        what = graph.path.name + (f" ({graph.function})" if graph.function else "")
        if graph.path.suffix == COMPILED_SUFFIX:  # compiled already (FluidInference ships .mlmodelc): load it
            try:
                return self.runtime.load(graph.path, self.compute_units, graph.function)
            except Exception as e:  # coremltools raises plain Exception
                raise BackendError(f"cannot load {what} with Core ML: {_one_line(e)}") from e
        cached = self.cache.has(graph.path, graph.sha256)
        try:
            return self.runtime.load(self._compiled(graph), self.compute_units, graph.function)
        except BackendError:
            raise
        except Exception as first:  # coremltools raises plain Exception
            if not cached:
                raise BackendError(f"cannot load {what} with Core ML: {_one_line(first)}") from first
            log.warning("Core ML: the compiled %s did not load (%s); compiling it again", what, _one_line(first))
        self.cache.forget(graph.path, graph.sha256)  # compiled by an older macOS, or damaged
        try:
            return self.runtime.load(self._compiled(graph), self.compute_units, graph.function)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"cannot load {what} with Core ML: {_one_line(e)}") from e

    def _compiled(self, graph: GraphSpec) -> Path:
        try:
            return self.cache.compiled(graph.path, graph.sha256)
        except Exception as e:  # coremltools raises plain Exception for compile failures
            raise BackendError(f"cannot compile {graph.path} for Core ML: {_one_line(e)}") from e


def coreml_backend(bundle: Bundle, compute_units: str = DEFAULT_COMPUTE_UNITS,
                   runtime: CoreMLRuntime | None = None, cache_root: Path | None = None) -> Backend:
    """The bundle's Core ML files as a Backend; `runtime` None: the real one, after checking this Mac."""
    check_compute_units(compute_units)
    if runtime is None:
        spec = bundle.manifest.get("backends", {}).get("coreml", {})
        check_available(spec.get("minimum_deployment_target") if isinstance(spec, dict) else None)
    return backend_class(bundle)(bundle, "coreml", CoreMLLoader(compute_units, runtime, cache_root))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
