"""cohere-transcribe-daemon: live captions with Cohere Transcribe through Core ML or ONNX Runtime.

`daemon.__version__` is the installed distribution's version (read on first use, not at import).
"""

from __future__ import annotations

DISTRIBUTION = "cohere-transcribe-daemon"


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # run from a checkout that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
