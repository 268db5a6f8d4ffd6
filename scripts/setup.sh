#!/usr/bin/env bash
# Set up everything on a fresh Debian machine: system packages, .venv with the daemon, exporter and test deps.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2)
# the end-to-end tests: a virtual microphone (PulseAudio null sink) and a terminal for the CLI client
command -v pulseaudio >/dev/null || need_apt+=(pulseaudio)
command -v pactl >/dev/null || need_apt+=(pulseaudio-utils)
[ -e /usr/share/alsa/alsa.conf.d/50-pulseaudio.conf ] || need_apt+=(libasound2-plugins)
command -v tmux >/dev/null || need_apt+=(tmux)
# the captions page's browser test: Debian's Chromium, driven by Playwright (which downloads no browser of its own)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
mkdir -p build
pipq() {
  if ! .venv/bin/python -m pip install "$@" > build/pip.log 2>&1; then
    grep -v "^WARNING: Location" build/pip.log >&2; echo "[setup] pip install $* failed" >&2; exit 1
  fi
}
echo "[setup] pip install -e .[export,dev] (torch==2.13.0 CPU)"
pipq -q --upgrade pip
pipq -q -e ".[export,dev]"
.venv/bin/python -c "import daemon, exporter, torch, transformers, onnxruntime, webrtcvad, sounddevice"
echo "[setup] ready"
