"""Packaging as a user meets it: where the default model is found, the demo model in the wheel, console scripts,
--version, and a runtime that imports only its declared dependencies. The `slow` test installs the checkout into
a fresh venv (pip reaches PyPI for the runtime dependencies) and transcribes a sample from another folder."""

from __future__ import annotations

import ast
import glob
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

from daemon.errors import BundleError
from daemon.live import page
from daemon.model import locate

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEMO = ROOT / "models" / "demo"
SHARE = "share/cohere-transcribe"
HEAVY = ("torch", "transformers", "tqdm", "jiwer", "coremltools", "onnx", "onnxscript")


# -- where the default model is found ----------------------------------------------------------------------


def bundle_at(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


@pytest.fixture()
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env var, no checkout, an empty prefix, user scheme and home: every place looked is empty."""
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(locate, "CHECKOUT_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(locate, "install_prefixes", lambda: [tmp_path / "prefix"])
    monkeypatch.setattr(locate.sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_env_var_wins_even_when_missing(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(locate.ENV_VAR, str(nowhere / "typo"))
    assert locate.default_model() == nowhere / "typo"  # no silent fallback past a variable that is set


def test_checkout_model_first(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = nowhere / "checkout"
    model = bundle_at(checkout / "models" / "demo")
    (checkout / "pyproject.toml").write_text("")
    bundle_at(nowhere / "prefix" / SHARE / "models" / "demo")
    monkeypatch.setattr(locate, "CHECKOUT_ROOT", checkout)
    monkeypatch.setattr(locate, "CHECKOUT_MODEL", checkout / "models" / "demo")
    assert locate.default_model() == model


def test_installed_model_without_a_checkout(nowhere: Path) -> None:
    model = bundle_at(nowhere / "prefix" / SHARE / "models" / "demo")
    bundle_at(nowhere / "home" / ".local" / "share" / "cohere-transcribe" / "models" / "demo")
    assert locate.default_model() == model


@pytest.mark.parametrize("platform,xdg,parts", [
    ("linux", None, (".local", "share")),
    ("linux", "xdg", ()),
    ("darwin", None, ("Library", "Application Support")),
])
def test_user_data_folder(nowhere: Path, monkeypatch: pytest.MonkeyPatch, platform: str, xdg: str | None,
                          parts: tuple[str, ...]) -> None:
    monkeypatch.setattr(locate.sys, "platform", platform)
    base = nowhere / "home" / Path(*parts) if xdg is None else nowhere / xdg
    if xdg is not None:
        monkeypatch.setenv("XDG_DATA_HOME", str(base))
    model = bundle_at(base / "cohere-transcribe" / "models" / "demo")
    assert locate.default_model() == model


def test_not_found_names_the_places_and_the_variable(nowhere: Path) -> None:
    with pytest.raises(BundleError) as e:
        locate.default_model()
    msg = str(e.value)
    assert locate.ENV_VAR in msg and "--model" in msg and "\n" not in msg
    assert str(nowhere / "prefix" / SHARE / "models" / "demo") in msg
    assert str(nowhere / "home" / ".local" / "share" / "cohere-transcribe" / "models" / "demo") in msg


def test_this_checkout_finds_its_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    assert locate.default_model() == DEMO


def test_install_prefixes_hold_this_environment() -> None:
    assert Path(sys.prefix) in locate.install_prefixes()


# -- what the wheel holds -----------------------------------------------------------------------------------


def test_every_demo_file_is_a_data_file() -> None:
    """pyproject's data-files install models/demo as a tree under share/cohere-transcribe, file for file."""
    data_files = PYPROJECT["tool"]["setuptools"]["data-files"]
    installed = set()
    for dest, patterns in data_files.items():
        for pattern in patterns:
            matches = [Path(m) for m in glob.glob(str(ROOT / pattern))]
            assert matches, f"{pattern} matches nothing"
            for m in matches:
                assert m.is_file(), f"{pattern} matches the folder {m} (setuptools cannot install it)"
                installed.add(f"{dest}/{m.name}")
    wanted = {f"{SHARE}/{p.relative_to(ROOT).as_posix()}" for p in DEMO.rglob("*") if p.is_file()}
    assert installed == wanted


def test_every_page_file_is_package_data() -> None:
    """The captions page (clients/web/, served at GET /) ships inside the clients package, file for file."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["clients"]
    shipped = {p for pattern in patterns for p in (ROOT / "clients").glob(pattern) if p.is_file()}
    assert shipped == {p for p in (ROOT / "clients" / "web").rglob("*") if p.is_file()}
    assert {name for name, _ in page.ROUTES.values()} == {p.name for p in shipped}


def test_console_scripts_return_their_exit_status() -> None:
    """Each script's main(argv) returns an int, which the generated wrapper passes to sys.exit."""
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"cohere-transcribe", "cohere-transcribe-export", "cohere-captions"}
    for target in scripts.values():
        module, func = target.split(":")
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        tree = ast.parse(source)
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
        assert main.returns is not None and ast.unparse(main.returns) == "int", target
        assert [a.arg for a in main.args.args] == ["argv"], target


@pytest.mark.parametrize("module", ["daemon.cli", "clients.cli", "exporter.__main__"])
def test_version_flag(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.split()[-1] == version("cohere-transcribe-daemon")


def test_dunder_version() -> None:
    import daemon

    assert daemon.__version__ == version("cohere-transcribe-daemon")


# -- runtime dependencies -----------------------------------------------------------------------------------


def imported_roots(folder: Path) -> dict[str, set[str]]:
    """Top-level names each module of a package imports (absolute imports only), by module file."""
    out: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[path.relative_to(ROOT).as_posix()] = names
    return out


def declared(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
            for r in requirements}


def test_runtime_imports_only_declared_dependencies() -> None:
    """daemon/ and clients/ import the standard library, themselves and `dependencies`; Core ML's package is
    the `coreml` extra and only the Core ML backends (coreml, coreml-reference) import it."""
    project = PYPROJECT["project"]
    runtime = declared(project["dependencies"])
    coreml = declared(project["optional-dependencies"]["coreml"])
    dists = {name: {d.lower() for d in ds} for name, ds in packages_distributions().items()}
    ours = {"daemon", "clients"}
    for package in ("daemon", "clients"):
        for file, names in imported_roots(ROOT / package).items():
            for name in names - ours - set(sys.stdlib_module_names) - {"__future__"}:
                core_ml = file.endswith(("backends/coreml.py", "backends/coreml_reference.py"))
                allowed = runtime | (coreml if core_ml else set())
                assert dists.get(name, {name}) & allowed, f"{file} imports {name}, which is not a dependency"


def test_runtime_does_not_load_the_export_toolchain() -> None:
    """Importing every runtime module loads none of torch, transformers, tqdm, jiwer (installed in this venv)."""
    modules = sorted({p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                      for p in (ROOT / "daemon").rglob("*.py")} - {"daemon.__main__", "daemon.model.backends.coreml"})
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- a fresh install outside the checkout ----------------------------------------------------------------------


def clean_copy(dst: Path) -> Path:
    """The checkout as a fresh clone would hold it (git's files, no build/ or egg-info left from earlier builds)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


def word_errors(ref: str, hyp: str) -> float:
    """Word error rate by edit distance."""
    r, h = ref.split(), hyp.split()
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1] / len(r)


@pytest.mark.slow
def test_fresh_venv_transcribes_with_the_default_model(tmp_path: Path) -> None:
    """pip install of the checkout into a new venv, then the console scripts from another folder, with a home
    that holds no model and no $COHERE_TRANSCRIBE_MODEL: the installed demo model is found."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    src = clean_copy(tmp_path / "src")
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        str(src)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(src)  # the install must not lean on the copy it was built from
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (locate.ENV_VAR, "PYTHONPATH", "XDG_DATA_HOME")}
    env["HOME"] = str(tmp_path / "home")

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=600,
                              cwd=work, env=env)

    wanted = version("cohere-transcribe-daemon")
    for name in ("cohere-transcribe", "cohere-captions", "cohere-transcribe-export"):
        r = script(name, "--version")
        assert r.returncode == 0 and r.stdout.split() == [name, wanted], (name, r.stdout, r.stderr)
    r = script("cohere-transcribe-export", "--checkpoint", "ckpt", "--out", "bundle")  # no export extra here
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: the exporter needs torch: pip install 'cohere-transcribe-daemon[export]'"], r.stderr

    r = script("cohere-transcribe", "transcribe", str(ROOT / "samples" / "demo-es.wav"), "--language", "es", "--vad")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    reference = ("hace diecisiete grados en el lavadero por favor cierra las persianas del despacho por favor "
                 "el concierto empieza a las ocho de la noche")  # samples/README.md
    assert word_errors(reference, r.stdout.lower()) <= 0.2, r.stdout  # the demo model's WER on es is ~2 %

    probe = "import sys, daemon.cli, daemon.live.app, clients.cli; print(sorted(set(sys.modules) & set({h!r})))"
    r = script("python", "-c", probe.format(h=HEAVY))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    r = script("python", "-c", "from daemon.live import page; print([page.response(p).status_code for p in page.ROUTES])")
    assert r.returncode == 0 and r.stdout.split() == ["[200,", "200,", "200,", "200]"], r.stdout + r.stderr  # the page
    r = script("python", "-c", "import daemon.model.locate as l; print(l.default_model())")
    assert Path(r.stdout.strip()).resolve() == (env_dir / SHARE / "models" / "demo").resolve(), r.stdout + r.stderr
