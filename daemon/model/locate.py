"""Where the default model (the bundle used when no --model is given) is found.

The first of these that exists, checked when a command runs (not at import):

1. `$COHERE_TRANSCRIBE_MODEL`: a bundle folder. When it is set, it is the answer even if it does not exist,
   so a typo gives an error instead of a silent fallback.
2. `models/demo` of the source checkout this package runs from (an editable install or `python -m daemon`
   in the checkout).
3. The demo model installed with the package: `<prefix>/share/cohere-transcribe/models/demo`, where
   `<prefix>` is the environment's (`sys.prefix`, a venv) or the user scheme's (`pip install --user`).
   pyproject.toml ships models/demo there as data files.
4. A per-user data folder: `$XDG_DATA_HOME/cohere-transcribe/models/demo` (default
   `~/.local/share/cohere-transcribe/models/demo`); on macOS
   `~/Library/Application Support/cohere-transcribe/models/demo`; on Windows
   `%LOCALAPPDATA%\\cohere-transcribe\\models\\demo`.

If none holds a manifest.json, the error names every place looked and the environment variable.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from daemon.errors import BundleError

ENV_VAR = "COHERE_TRANSCRIBE_MODEL"
APP_DIR = "cohere-transcribe"
DEMO = Path("models") / "demo"  # relative to a checkout, an install's share/cohere-transcribe, a data folder
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_MODEL = CHECKOUT_ROOT / DEMO
DEFAULT_MODEL = CHECKOUT_MODEL  # the checkout's demo model, for tools that only run from a checkout (bench/)


def default_model() -> Path:
    """The bundle folder used when no --model is given (see the module docstring for the order).

    Raises:
        BundleError: when $COHERE_TRANSCRIBE_MODEL is unset and no demo model is found.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    places = candidates()
    for place in places:
        if (place / "manifest.json").is_file():
            return place
    looked = "; ".join(str(p) for p in places)
    raise BundleError(f"no model given and no demo model found (looked in {looked}); "
                      f"pass --model BUNDLE or set {ENV_VAR} to a bundle folder")


def candidates() -> list[Path]:
    """Where the demo model may be, in the order they are tried (after the environment variable)."""
    places: list[Path] = []
    if (CHECKOUT_ROOT / "pyproject.toml").is_file():
        places.append(CHECKOUT_MODEL)
    places += [prefix / "share" / APP_DIR / DEMO for prefix in install_prefixes()]
    places.append(user_data_dir() / APP_DIR / DEMO)
    return list(dict.fromkeys(places))  # without repeats, order kept


def install_prefixes() -> list[Path]:
    """Where pip puts a distribution's data files: this environment's prefix, then the user scheme's."""
    paths = [sys.prefix, sysconfig.get_path("data")]
    try:
        paths.append(sysconfig.get_path("data", sysconfig.get_preferred_scheme("user")))
    except KeyError:  # no user scheme on this platform
        pass
    return list(dict.fromkeys(Path(p) for p in paths))


def user_data_dir() -> Path:
    """The per-user data folder of this platform (XDG on Linux and other Unix)."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
