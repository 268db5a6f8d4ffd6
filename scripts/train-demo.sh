#!/usr/bin/env bash
# Rebuild the demo model from nothing: train (two runs, the second continuing the first with speed perturbation
# and multi-sentence clips), export the bundle, measure it through the daemon and write its model card.
#   bash scripts/train-demo.sh [RUN_DIR]   (default build/demo; about 2 h on 2 CPU cores)
# It writes RUN_DIR/stage1, RUN_DIR/stage2 and RUN_DIR/bundle; copy RUN_DIR/stage2/checkpoint to
# models/demo-checkpoint and RUN_DIR/bundle to models/demo to ship the result.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-build/demo}
py=.venv/bin/python
$py -m exporter.demo.train --out "$run/stage1" --steps 6000 --no-perturb --multi-share 0
$py -m exporter.demo.train --out "$run/stage2" --init "$run/stage1/checkpoint" --steps 3000 --lr 2e-4
$py -m exporter --checkpoint "$run/stage2/checkpoint" --out "$run/bundle" --buckets 500,1000,2000,3500
$py -m exporter.demo.evaluate --model "$run/bundle" --out "$run/stage2/checkpoint/evaluation.json"
$py -m exporter.demo.card --checkpoint "$run/stage2/checkpoint" --bundle "$run/bundle"
