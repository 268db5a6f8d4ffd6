#!/usr/bin/env bash
# Set everything up, then transcribe a sample with the daemon's engine.
#
# Until the trained demo model lands (models/demo/), this builds a TINY RANDOM Cohere-architecture checkpoint,
# exports it with our exporter and transcribes a generated espeak-ng clip: the pipeline is real, the text is
# gibberish because the weights are random.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
mkdir -p build
if [ -f models/demo/manifest.json ]; then
  MODEL=models/demo
else
  MODEL=build/tiny-bundle
  if [ ! -f "$MODEL/manifest.json" ]; then
    $PY -m exporter.tiny --out build/tiny-checkpoint
    $PY -m exporter --checkpoint build/tiny-checkpoint --out "$MODEL" --backends onnx,coreml 2>&1 \
      | grep -E "^\[export\]|manifest.json$"
  fi
  echo "NOTE: $MODEL is a tiny model with RANDOM weights: expect gibberish, not a transcript."
fi
espeak-ng -v en-us -w build/sample.wav "set a timer for ten minutes and turn on the kitchen lights"
echo "+ python -m daemon transcribe build/sample.wav --model $MODEL --format json"
$PY -m daemon transcribe build/sample.wav --model "$MODEL" --format json
