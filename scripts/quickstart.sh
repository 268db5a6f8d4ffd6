#!/usr/bin/env bash
# Set up the daemon (scripts/setup.sh --runtime: no torch; on a Mac nothing from Homebrew), then run it on the
# bundled demo model (no download; on a Mac through Core ML, macOS 15 or later, else ONNX Runtime):
#   1. transcribe the bundled samples (English and Spanish) with `python -m daemon transcribe --vad` (windows cut
#      at pauses; one line per file);
#   2. serve the English sample as if it were a microphone (`serve --source FILE`, real time) and show the live
#      captions with `clients/cli.py --partials --until-source-ends`.
# For the microphone: `.venv/bin/python -m daemon serve` and, in another terminal, `.venv/bin/python clients/cli.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime
PY=.venv/bin/python
if [ ! -f models/demo/manifest.json ]; then
  echo "error: models/demo (the bundled demo model) is missing from this checkout" >&2
  exit 2
fi
# the runtime the daemon picks for the demo model here (coreml on a Mac that can run it; else onnx, with the reason)
backend=$($PY -c "from daemon.model.backends import default_backend
from daemon.model.bundle import load_bundle
print(default_backend(load_bundle('models/demo')))")
echo "[quickstart] the demo model runs on: $backend"
for lang in en es; do
  echo "+ python -m daemon transcribe samples/demo-$lang.wav --language $lang --vad"
  $PY -m daemon transcribe "samples/demo-$lang.wav" --language "$lang" --vad
done
echo "+ python -m daemon serve --source samples/demo-en.wav   (live captions, paced in real time)"
$PY -m daemon serve --source samples/demo-en.wav --port 8766 --log-level WARNING &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
$PY - <<'PY'  # wait until the daemon listens (the file is already playing into its buffer)
import time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen("http://127.0.0.1:8766/health", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
PY
$PY clients/cli.py --url ws://127.0.0.1:8766 --partials --until-source-ends
