"""Where the default model is found: $COHERE_TRANSCRIBE_MODEL, else the checkout's models/demo."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "COHERE_TRANSCRIBE_MODEL"
CHECKOUT_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo"


def default_model() -> Path:
    """The bundle folder used when no --model is given."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else CHECKOUT_MODEL


DEFAULT_MODEL = CHECKOUT_MODEL
