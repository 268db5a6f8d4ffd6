#!/usr/bin/env bash
# What CI runs: set everything up, lint (ruff), type-check (mypy --strict on daemon/), then the whole test suite.
# Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the runtime's tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check"
.venv/bin/ruff check daemon exporter clients tests bench devtools
echo "[test] mypy (config in pyproject.toml)"
.venv/bin/mypy
echo "[test] pytest"
exec .venv/bin/python -m pytest -q "$@"
