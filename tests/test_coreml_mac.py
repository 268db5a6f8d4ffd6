"""The Mac runtime through its seam: the compile cache, functions by name, compute units, warm-up, macOS checks.

Core ML cannot compile or predict off macOS, so a fake CoreMLRuntime stands in for coremltools: it "compiles" a
package by writing a folder and "loads" a function as a session that returns zeros of the shapes the manifest
declares for that function. Everything around it (cache paths, reuse, recompiles, which function each bucket
loads, warm-up, errors) is the real code.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.cli import _parser
from daemon.errors import BackendError, BundleError, ConfigError
from daemon.live.config import build_config
from daemon.model.backends import get_backend
from daemon.model.backends.base import Array
from daemon.model.backends.coreml import (
    COMPUTE_UNITS,
    CoreMLLoader,
    check_macos,
    compile_cache_dir,
    coreml_backend,
)
from daemon.model.bundle import Bundle, GraphSpec, load_bundle
from daemon.model.tokenizer import Tokenizer
from daemon.model.transcriber import Transcriber

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
ENCODER = "coreml/encoder.mlpackage"


class FakeSession:
    """Zeros of the declared output shapes; records each run by function."""

    def __init__(self, graph: GraphSpec, runs: list[str]) -> None:
        self.graph, self.runs = graph, runs

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        assert {k: v.shape for k, v in feeds.items()} == {t.name: t.shape for t in self.graph.inputs}
        self.runs.append(self.graph.function or self.graph.path.name)
        return {t.name: np.zeros(t.shape, t.dtype) for t in self.graph.outputs}


class FakeRuntime:
    """Records compiles and loads; a compiled model is a folder naming its package."""

    def __init__(self, bundle: Bundle) -> None:
        spec = bundle.backends["coreml"]
        graphs = (*spec.encoders.values(), spec.decoder, *([spec.prefill] if spec.prefill else []))
        self.graphs = {(g.path.stem, g.function): g for g in graphs}
        self.compiles: list[str] = []
        self.loads: list[tuple[Path, str, str | None]] = []
        self.runs: list[str] = []
        self.fail_loads = 0

    def compile(self, package: Path, destination: Path) -> None:
        assert package.suffix == ".mlpackage" and destination.suffix == ".mlmodelc" and not destination.exists()
        self.compiles.append(package.name)
        destination.mkdir()
        (destination / "source.txt").write_text(package.name)

    def load(self, compiled: Path, compute_units: str, function: str | None) -> FakeSession:
        self.loads.append((compiled, compute_units, function))
        if self.fail_loads:
            self.fail_loads -= 1
            raise RuntimeError("Error compiling model: incompatible\n  compiled model")
        package = (compiled / "source.txt").read_text()
        return FakeSession(self.graphs[(Path(package).stem, function)], self.runs)


@pytest.fixture
def demo() -> Bundle:
    return load_bundle(DEMO)


def start(bundle: Bundle, cache: Path, compute_units: str = "all") -> tuple[Transcriber, FakeRuntime]:
    """What `serve` does before model_loaded: load the backend, then warm up."""
    rt = FakeRuntime(bundle)
    tr = Transcriber(bundle, coreml_backend(bundle, compute_units, runtime=rt, cache_root=cache),
                     Tokenizer(bundle.tokenizer_path))
    tr.warm_up()
    return tr, rt


# ---------------------------------------------------------------- the bundle: one package, a function per bucket

def test_demo_encoder_is_one_package_with_a_function_per_bucket(demo: Bundle) -> None:
    enc = demo.backends["coreml"].encoders
    assert {g.path for g in enc.values()} == {DEMO / ENCODER}
    assert {f: g.function for f, g in enc.items()} == {b: f"encoder_{b}" for b in demo.buckets}
    dec, prefill = demo.backends["coreml"].decoder, demo.backends["coreml"].prefill
    assert prefill is not None and (dec.path, dec.function) == (DEMO / "coreml/decoder_step.mlpackage", "decoder_step")
    assert (prefill.path, prefill.function) == (dec.path, "prefill")  # the prompt in one call, the weights once
    assert all(g.function is None for g in demo.backends["onnx"].encoders.values())
    assert enc[500].sha256 == demo.manifest["files"][ENCODER]
    assert demo.manifest["format_version"] == 3


def test_version_1_bundles_are_still_read(tmp_path: Path) -> None:
    """Version 1: a package per bucket, no function names; it loads, each graph its package's default."""
    root = tmp_path / "v1"
    shutil.copytree(DEMO, root)
    m = json.loads((root / "manifest.json").read_text())
    m["format_version"] = 1
    for frames, g in m["backends"]["coreml"]["encoders"].items():
        del g["function"]
        g["file"] = f"coreml/encoder_{frames}.mlpackage"
        shutil.copytree(root / ENCODER, root / g["file"])
        m["files"][g["file"]] = m["files"][ENCODER]
    del m["files"][ENCODER]
    shutil.rmtree(root / ENCODER)
    (root / "manifest.json").write_text(json.dumps(m))
    b = load_bundle(root)
    assert {f: (g.path.name, g.function) for f, g in b.backends["coreml"].encoders.items()} == {
        f: (f"encoder_{f}.mlpackage", None) for f in b.buckets}


@pytest.mark.parametrize("version", [0, 4, "2"])
def test_unknown_format_version_is_one_line(tmp_path: Path, version: object) -> None:
    root = tmp_path / "b"
    shutil.copytree(DEMO, root)
    m = json.loads((root / "manifest.json").read_text())
    m["format_version"] = version
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        load_bundle(root)
    msg = str(e.value)
    assert "\n" not in msg and f"format_version {version!r}, this daemon reads 1, 2 and 3;" in msg


def test_a_function_name_must_be_a_string(tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(DEMO, root)
    m = json.loads((root / "manifest.json").read_text())
    m["backends"]["coreml"]["encoders"]["500"]["function"] = 500
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"malformed field: the function of coreml/encoder\.mlpackage"):
        load_bundle(root)


# ---------------------------------------------------------------- the compile cache

def test_first_start_compiles_each_package_once_and_fills_the_cache(demo: Bundle, tmp_path: Path) -> None:
    _, rt = start(demo, tmp_path / "cache")
    assert sorted(rt.compiles) == ["decoder_step.mlpackage", "encoder.mlpackage"]  # not once per bucket
    files = demo.manifest["files"]
    for rel in (ENCODER, "coreml/decoder_step.mlpackage"):
        compiled = tmp_path / "cache" / files[rel] / (Path(rel).stem + ".mlmodelc")
        assert (compiled / "source.txt").read_text() == Path(rel).name
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no work folders left


def test_every_function_is_loaded_by_name_and_warmed_up(demo: Bundle, tmp_path: Path) -> None:
    """warm_up (run before model_loaded) runs every encoder function and the decoder once."""
    _, rt = start(demo, tmp_path / "cache", "cpu_and_ne")
    cache = tmp_path / "cache"
    loaded = {(c.relative_to(cache).parts[-1], cu, f) for c, cu, f in rt.loads}
    assert loaded == {("encoder.mlmodelc", "cpu_and_ne", f"encoder_{b}") for b in demo.buckets} | {
        ("decoder_step.mlmodelc", "cpu_and_ne", "decoder_step"), ("decoder_step.mlmodelc", "cpu_and_ne", "prefill")}
    assert len(rt.loads) == len(demo.buckets) + 2
    assert set(rt.runs) == {f"encoder_{b}" for b in demo.buckets} | {"decoder_step", "prefill"}


def test_second_start_reuses_the_cache(demo: Bundle, tmp_path: Path) -> None:
    start(demo, tmp_path / "cache")
    _, rt = start(demo, tmp_path / "cache")  # a restart: a new process would find the same folders
    assert rt.compiles == []
    assert len(rt.loads) == len(demo.buckets) + 2


def test_a_changed_package_is_compiled_again(tmp_path: Path) -> None:
    """A re-exported encoder has a new checksum: it is compiled again, the unchanged decoder is not."""
    root = tmp_path / "b"
    shutil.copytree(DEMO, root)
    start(load_bundle(root), tmp_path / "cache")
    m = json.loads((root / "manifest.json").read_text())
    m["files"][ENCODER] = "0" * 64  # what a re-export writes for a changed package
    (root / "manifest.json").write_text(json.dumps(m))
    _, rt = start(load_bundle(root), tmp_path / "cache")
    assert rt.compiles == ["encoder.mlpackage"]
    assert (tmp_path / "cache" / ("0" * 64) / "encoder.mlmodelc").is_dir()


def test_without_a_listed_checksum_the_package_is_hashed(demo: Bundle, tmp_path: Path) -> None:
    from daemon.model.checksums import sha256_of

    graph = dataclasses.replace(demo.backends["coreml"].decoder, sha256=None)
    rt = FakeRuntime(demo)
    CoreMLLoader(runtime=rt, cache_root=tmp_path)(graph)
    assert (tmp_path / sha256_of(graph.path) / "decoder_step.mlmodelc").is_dir()


def test_a_failed_compile_leaves_no_cache_entry(demo: Bundle, tmp_path: Path) -> None:
    class Broken(FakeRuntime):
        def compile(self, package: Path, destination: Path) -> None:
            destination.mkdir()
            raise RuntimeError("compiler crashed\nhalfway")

    with pytest.raises(BackendError) as e:
        coreml_backend(demo, runtime=Broken(demo), cache_root=tmp_path)
    msg = str(e.value)
    assert msg.startswith("cannot compile ") and msg.endswith("decoder_step.mlpackage for Core ML: compiler crashed "
                                                              "halfway")
    assert list(tmp_path.iterdir()) == []  # the next start compiles from scratch
    _, rt = start(demo, tmp_path)
    assert sorted(rt.compiles) == ["decoder_step.mlpackage", "encoder.mlpackage"]


def test_a_cached_model_that_no_longer_loads_is_compiled_again_once(demo: Bundle, tmp_path: Path) -> None:
    """E.g. compiled by an older macOS: dropped, compiled again, loaded; a second failure is a BackendError."""
    start(demo, tmp_path)
    rt = FakeRuntime(demo)
    rt.fail_loads = 1
    coreml_backend(demo, runtime=rt, cache_root=tmp_path)  # loads the decoder
    assert rt.compiles == ["decoder_step.mlpackage"] and len(rt.loads) == 2
    rt = FakeRuntime(demo)
    rt.fail_loads = 2
    with pytest.raises(BackendError, match=r"^cannot load decoder_step.mlpackage \(decoder_step\) with Core ML: Error compiling "
                                           r"model: incompatible compiled model$"):
        coreml_backend(demo, runtime=rt, cache_root=tmp_path)


def test_a_fresh_compile_that_does_not_load_is_not_retried(demo: Bundle, tmp_path: Path) -> None:
    rt = FakeRuntime(demo)
    rt.fail_loads = 1
    with pytest.raises(BackendError, match=r"cannot load decoder_step\.mlpackage"):
        coreml_backend(demo, runtime=rt, cache_root=tmp_path)
    assert rt.compiles == ["decoder_step.mlpackage"]


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "cohere-transcribe" / "coreml"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    assert compile_cache_dir() == Path.home() / "Library" / "Caches" / "cohere-transcribe" / "coreml"


# ---------------------------------------------------------------- compute units

@pytest.mark.slow
def test_compute_units_map_to_coremltools() -> None:
    import coremltools as ct

    from daemon.model.backends.coreml import compute_unit

    assert {n: compute_unit(n, ct) for n in COMPUTE_UNITS} == {
        "all": ct.ComputeUnit.ALL, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
        "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU, "cpu_only": ct.ComputeUnit.CPU_ONLY}


def test_compute_units_flag_and_toml_key(tmp_path: Path) -> None:
    assert build_config({}).compute_units == "all"
    assert build_config({"compute_units": "cpu_only"}).compute_units == "cpu_only"
    p = tmp_path / "c.toml"
    p.write_text('compute_units = "cpu_and_gpu"\n')
    assert build_config({}, str(p)).compute_units == "cpu_and_gpu"
    p.write_text('compute_units = "gpu"\n')
    with pytest.raises(ConfigError, match=r"^compute_units must be one of all, cpu_and_ne, cpu_and_gpu, cpu_only, "
                                          r"not 'gpu'$"):
        build_config({}, str(p))
    for cmd in (["serve"], ["transcribe", "x.wav"]):
        assert _parser().parse_args([*cmd, "--compute-units", "cpu_and_ne"]).compute_units == "cpu_and_ne"
    assert _parser().parse_args(["transcribe", "x.wav"]).compute_units == "all"


def test_unknown_compute_units_are_a_config_error(demo: Bundle, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compute_units must be one of"):
        coreml_backend(demo, "ane", runtime=FakeRuntime(demo), cache_root=tmp_path)


# ---------------------------------------------------------------- where Core ML cannot run

def test_macos_older_than_the_target_is_one_line() -> None:
    with pytest.raises(BackendError) as e:
        check_macos("macOS15", "Darwin", "14.6.1")
    assert str(e.value) == ("the bundle's Core ML files need macOS 15 or later, this Mac runs macOS 14.6.1; "
                            "update macOS or use --backend onnx")
    for ok in ("15.0", "15.4.1", "26.0"):
        check_macos("macOS15", "Darwin", ok)
    check_macos(None, "Darwin", "14.0")  # a bundle without a target: nothing to check


def test_off_macos_is_the_one_line_error() -> None:
    with pytest.raises(BackendError, match=r"^the coreml backend runs only on macOS \(this is Linux\); use "
                                           r"--backend onnx$"):
        check_macos("macOS15", "Linux", "")


def test_get_backend_checks_this_machine(demo: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.mac_ver", lambda: ("14.5", ("", "", ""), "arm64"))
    with pytest.raises(BackendError, match=r"this Mac runs macOS 14\.5;"):
        get_backend(demo, "coreml", "cpu_only")


# ---------------------------------------------------------------- the real runtime's calls into coremltools

@pytest.mark.slow
def test_coremltools_is_called_as_its_api_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CoreMLTools' calls bind to coremltools 9's real signatures (compile_model to a .mlmodelc path,
    CompiledMLModel with compute units and function_name); the calls themselves are stubbed (no Core ML here)."""
    import inspect

    import coremltools as ct
    import coremltools.models.utils as cu

    from daemon.model.backends.coreml import CoreMLTools

    calls: list[tuple[str, dict[str, Any]]] = []
    compile_sig = inspect.signature(cu.compile_model)
    load_sig = inspect.signature(ct.models.CompiledMLModel.__init__)

    def compile_model(*a: Any, **k: Any) -> str:
        calls.append(("compile", dict(compile_sig.bind(*a, **k).arguments)))
        return str(a[1])

    class Compiled:
        def __init__(self, *a: Any, **k: Any) -> None:
            calls.append(("load", {n: v for n, v in load_sig.bind(self, *a, **k).arguments.items() if n != "self"}))

        def predict(self, feeds: dict[str, Array]) -> dict[str, Any]:
            return {"logits": [[0.5, 1.5]]}

    monkeypatch.setattr(cu, "compile_model", compile_model)
    monkeypatch.setattr(ct.models, "CompiledMLModel", Compiled)
    rt = CoreMLTools()
    rt.compile(tmp_path / "encoder.mlpackage", tmp_path / "encoder.mlmodelc")
    out = rt.load(tmp_path / "encoder.mlmodelc", "cpu_and_ne", "encoder_500").run({})
    rt.load(tmp_path / "decoder_step.mlmodelc", "all", None)
    assert calls == [
        ("compile", {"model": str(tmp_path / "encoder.mlpackage"),
                     "destination_path": str(tmp_path / "encoder.mlmodelc")}),
        ("load", {"path": str(tmp_path / "encoder.mlmodelc"), "compute_units": ct.ComputeUnit.CPU_AND_NE,
                  "function_name": "encoder_500"}),
        ("load", {"path": str(tmp_path / "decoder_step.mlmodelc"), "compute_units": ct.ComputeUnit.ALL,
                  "function_name": None})]
    assert isinstance(out["logits"], np.ndarray) and out["logits"].shape == (1, 2)


@pytest.mark.slow
def test_compiling_off_macos_is_one_line(demo: Bundle, tmp_path: Path) -> None:
    """The real compile call on Linux fails inside coremltools; the loader reports one line and caches nothing."""
    with pytest.raises(BackendError) as e:
        CoreMLLoader(cache_root=tmp_path)(demo.backends["coreml"].decoder)
    assert str(e.value).startswith(f"cannot compile {DEMO / 'coreml/decoder_step.mlpackage'} for Core ML: ")
    assert "\n" not in str(e.value)
    assert not any(p.suffix == ".mlmodelc" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(("system", "mac", "coremltools", "expected"), [
    ("Linux", "", True, "onnx"),
    ("Darwin", "15.1", True, "coreml"),
    ("Darwin", "14.6.1", True, "onnx"),  # older than the files' macOS 15 target: ONNX, with a warning
    ("Darwin", "15.1", False, "onnx"),  # coremltools missing: ONNX, with a warning
])
def test_the_default_backend_is_coreml_only_where_it_can_run(
        demo: Bundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, system: str, mac: str,
        coremltools: bool, expected: str) -> None:
    import builtins
    import platform
    import sys
    import types

    from daemon.model.backends import default_backend

    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "mac_ver", lambda: (mac, ("", "", ""), ""))
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "coremltools" and not coremltools:
            raise ImportError("No module named 'coremltools'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    if coremltools:  # present, whether or not this venv has it (the check only imports it)
        monkeypatch.setitem(sys.modules, "coremltools", types.ModuleType("coremltools"))
    assert default_backend(demo) == expected
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert bool(warned) == (system == "Darwin" and expected == "onnx")
    if warned:
        assert warned[0].endswith("— using onnx") and ("macOS 14.6.1" in warned[0] or "coremltools" in warned[0])
