#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine or Mac: .venv with the daemon and what it needs.
#   bash scripts/setup.sh             everything: the daemon, the exporter (torch 2.13 CPU) and the test tools
#   bash scripts/setup.sh --runtime   the daemon and its clients only (the quick start); on macOS with coremltools
#                                     so the demo model runs through Core ML
# Debian/Ubuntu: system packages from apt (with sudo when not root). macOS: no apt, and nothing from Homebrew for
# the runtime (the macOS wheels of sounddevice and soundfile carry PortAudio and libsndfile); the test suite's
# command-line tools come from Homebrew and are named when missing.
# PYTHON=/path/to/python3.12 picks the interpreter for a new .venv (default: python3; 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=all
case "${1:-}" in
  "") ;;
  --runtime) mode=runtime ;;
  *) echo "usage: bash scripts/setup.sh [--runtime]" >&2; exit 2 ;;
esac
os=$(uname -s)
PYTHON=${PYTHON:-python3}

# ---------------------------------------------------------------- system packages
if [ "$os" = Darwin ]; then
  if [ "$mode" = all ] && [ "$(uname -m)" = x86_64 ]; then
    echo "error: the exporter and the test suite need torch 2.13, which has no wheels for Intel Macs; use an" \
         "Apple silicon Mac or Linux for them (the quick start, bash scripts/quickstart.sh, works here)" >&2
    exit 2
  fi
  if [ "$mode" = all ]; then
    need_brew=()
    for tool in espeak-ng sox tmux; do command -v "$tool" >/dev/null || need_brew+=("$tool"); done
    if [ ${#need_brew[@]} -gt 0 ]; then
      echo "[setup] the test suite also needs: brew install ${need_brew[*]} (nothing else here needs Homebrew;" \
           "its virtual-microphone and browser tests run on Linux only)"
    fi
  fi
else
  need_apt=()
  if [ ! -x .venv/bin/python ]; then
    command -v "$PYTHON" >/dev/null || need_apt+=(python3)
    "$PYTHON" -c "import ensurepip" 2>/dev/null || need_apt+=(python3-venv)  # Debian splits venv's pip out
  fi
  ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2)  # sounddevice (microphone)
  if [ "$mode" = all ]; then
    command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
    command -v sox >/dev/null || need_apt+=(sox)
    # the end-to-end tests: a virtual microphone (PulseAudio null sink) and a terminal for the CLI client
    command -v pulseaudio >/dev/null || need_apt+=(pulseaudio)
    command -v pactl >/dev/null || need_apt+=(pulseaudio-utils)
    [ -e /usr/share/alsa/alsa.conf.d/50-pulseaudio.conf ] || need_apt+=(libasound2-plugins)
    command -v tmux >/dev/null || need_apt+=(tmux)
    # the captions page's browser test: Debian's Chromium, driven by Playwright (which downloads no browser of its own)
    [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  fi
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
fi

# ---------------------------------------------------------------- Python ≥ 3.11 and .venv
if [ "$os" = Darwin ]; then
  hint="macOS's own python3 is 3.9: install Python 3.12 from python.org or with \`brew install python@3.12\`, then run again"
else
  hint="Debian 12 and Ubuntu 24.04 have it as python3"
fi
hint="$hint; PYTHON=/path/to/python3.12 picks another"
version() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "unknown"; }
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if [ -x .venv/bin/python ]; then
  if ! new_enough .venv/bin/python; then
    echo "error: .venv has Python $(version .venv/bin/python); this project needs 3.11 or newer: remove .venv" \
         "and run again ($hint)" >&2
    exit 2
  fi
else
  if ! command -v "$PYTHON" >/dev/null; then
    echo "error: $PYTHON not found; this project needs Python 3.11 or newer ($hint)" >&2
    exit 2
  fi
  if ! new_enough "$PYTHON"; then
    echo "error: $PYTHON is Python $(version "$PYTHON"); this project needs 3.11 or newer ($hint)" >&2
    exit 2
  fi
  echo "[setup] creating .venv (Python $(version "$PYTHON"))"
  "$PYTHON" -m venv .venv
fi

mkdir -p build
pipq() {
  if ! .venv/bin/python -m pip install "$@" > build/pip.log 2>&1; then
    grep -v "^WARNING: Location" build/pip.log >&2; echo "[setup] pip install $* failed" >&2; exit 1
  fi
}
pipq -q --upgrade pip
if [ "$mode" = runtime ]; then
  if [ "$os" = Darwin ]; then
    echo "[setup] pip install -e .[coreml] (the daemon, its clients, coremltools for Core ML)"
    pipq -q -e ".[coreml]"
    .venv/bin/python -c "import daemon, onnxruntime, webrtcvad, sounddevice, websockets, coremltools"
  else
    echo "[setup] pip install -e . (the daemon and its clients)"
    pipq -q -e .
    .venv/bin/python -c "import daemon, onnxruntime, webrtcvad, sounddevice, websockets"
  fi
else
  echo "[setup] pip install -e .[export,dev] (torch==2.13.0 CPU)"
  pipq -q -e ".[export,dev]"
  .venv/bin/python -c "import daemon, exporter, torch, transformers, onnxruntime, webrtcvad, sounddevice"
fi
echo "[setup] ready"
