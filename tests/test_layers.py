"""The direction of daemon/'s dependencies: audio ← model ← output ← live ← cli, no import cycle, and the
layers below `live` load none of asyncio, websockets or sounddevice.

The import graph is read from the source with `ast`, every import statement counted (function-level ones too,
relative ones resolved), so a lazy import cannot hide an edge. The loaded-modules check imports the packages
for real, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Container
from pathlib import Path

import pytest

import daemon

DAEMON = Path(daemon.__file__).parent
LIVE_ONLY = ("asyncio", "websockets", "sounddevice")  # what only daemon.live (and the CLI) may load

# A layer may import the layers to its left, never one to its right (daemon.errors and daemon/__init__ are
# shared by all). daemon.__main__ only calls daemon.cli.
LAYERS = ("daemon.audio", "daemon.model", "daemon.output", "daemon.live", "daemon.service", "daemon.cli")
SHARED = ("daemon", "daemon.errors", "daemon.__main__")

Graph = dict[str, set[str]]


# ---------------------------------------------------------------- the import graph, from the source
def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py below the package folder `root` (named by its folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(module: str, path: Path, modules: Container[str]) -> set[str]:
    """The modules among `modules` that any import statement in the file loads: `import a.b` gives a.b;
    `from a import b` gives a.b when that is a module, else a. Relative imports are resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = package.split(".")
                source = ".".join([*parts[: len(parts) - node.level + 1], *([source] if source else [])])
            out.update(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names)
    return {m for m in out if m in modules and m != module}


def import_graph(root: Path) -> Graph:
    """Module → the modules of the same package that it imports."""
    modules = module_names(root)
    return {m: imported_modules(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all below it are searched
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int | None:
    """Index of the module's layer in LAYERS; None for the shared modules."""
    if module in SHARED:
        return None
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS or SHARED")


def upward_edges(graph: Graph) -> list[tuple[str, str]]:
    """Imports from a layer into a layer after it in LAYERS, or from daemon/__init__ or daemon.errors into any
    layer."""
    bad = []
    for a, targets in graph.items():
        la = layer_of(a)
        for b in targets:
            lb = layer_of(b)
            if lb is None or a == "daemon.__main__":
                continue
            if la is None or lb > la:
                bad.append((a, b))
    return sorted(bad)


# ---------------------------------------------------------------- the checks
def test_no_import_cycle() -> None:
    assert find_cycle(import_graph(DAEMON)) is None


def test_each_layer_imports_only_layers_below_it() -> None:
    assert upward_edges(import_graph(DAEMON)) == []


def test_the_graph_reader_finds_a_lazy_relative_import_cycle(tmp_path: Path) -> None:
    """The checker itself: the shape of the cycle at 05addee (config → decode → backends → bundle → config,
    closed by an import inside a function) in a throwaway package."""
    pkg = tmp_path / "pkg"
    (pkg / "backends").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "config.py": "def options():\n    from .decode import DecodeOptions\n    return DecodeOptions\n",
        "decode.py": "from . import backends\nclass DecodeOptions: ...\n",
        "backends/__init__.py": "from .base import Backend\n",
        "backends/base.py": "from ..bundle import Bundle\nclass Backend: ...\n",
        "bundle.py": "class Bundle:\n    def hint(self):\n        from pkg.config import DEFAULT\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.backends.base"] == {"pkg.bundle"} and graph["pkg.decode"] == {"pkg.backends"}
    assert find_cycle(graph) == ["pkg.backends", "pkg.backends.base", "pkg.bundle", "pkg.config", "pkg.decode",
                                 "pkg.backends"]
    del files["bundle.py"]
    (pkg / "bundle.py").write_text("class Bundle: ...\n")
    assert find_cycle(import_graph(pkg)) is None


def test_upward_edges_are_found() -> None:
    graph = {"daemon.audio.vad": {"daemon.model.bundle", "daemon.errors"}, "daemon.output.formats":
             {"daemon.model.segment"}, "daemon.model.decode": {"daemon.live.config"}, "daemon.errors": set()}
    assert upward_edges(graph) == [("daemon.audio.vad", "daemon.model.bundle"),
                                   ("daemon.model.decode", "daemon.live.config")]


# ---------------------------------------------------------------- what importing loads, in a fresh interpreter
LOADED = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    pkg = importlib.import_module(name)
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {live_only})))
"""


def loaded_by(*packages: str) -> list[str]:
    """The LIVE_ONLY modules in sys.modules after importing `packages` and every module below them."""
    code = LOADED.format(live_only=set(LIVE_ONLY))
    done = subprocess.run([sys.executable, "-c", code, *packages], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


@pytest.mark.parametrize("packages", [("daemon.audio", "daemon.model"), ("daemon.output",)], ids=" ".join)
def test_lower_layers_load_no_asyncio_websockets_or_sounddevice(packages: tuple[str, ...]) -> None:
    assert loaded_by(*packages) == []


def test_the_loaded_modules_check_sees_the_live_layer() -> None:
    assert {"asyncio", "websockets"} <= {m.split(".")[0] for m in loaded_by("daemon.live")}  # sounddevice: lazy
