#!/usr/bin/env bash
# Rebuild the demo model from nothing: train (five runs: the second continues the first with speed perturbation
# and multi-sentence clips, the third continues the second at a lower learning rate on more renderings of the
# same sentences, the fourth hears fresh renderings and saves the mean of its last weights, the fifth hears
# fresh renderings again with half of its clips holding two or three sentences), export the bundle, measure it
# through the daemon and write its model card.
#   bash scripts/train-demo.sh [RUN_DIR]   (default build/demo; about 4.5 h on 2 CPU cores)
# It writes RUN_DIR/stage1..5 and RUN_DIR/bundle; copy RUN_DIR/stage5/checkpoint to
# models/demo-checkpoint and RUN_DIR/bundle to models/demo to ship the result.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-build/demo}
py=.venv/bin/python
$py -m exporter.demo.train --out "$run/stage1" --steps 6000 --no-perturb --multi-share 0
$py -m exporter.demo.train --out "$run/stage2" --init "$run/stage1/checkpoint" --steps 3000 --lr 2e-4
$py -m exporter.demo.train --out "$run/stage3" --init "$run/stage2/checkpoint" --steps 4000 --lr 1.5e-4 --clips 12000
$py -m exporter.demo.train --out "$run/stage4" --init "$run/stage3/checkpoint" --audio-seed 1 --clips 12000 \
    --steps 3000 --lr 1e-4 --eval-every 500 --average 4
$py -m exporter.demo.train --out "$run/stage5" --init "$run/stage4/checkpoint" --audio-seed 2 --clips 8000 \
    --multi-share 0.5 --steps 2500 --lr 1e-4 --eval-every 500 --average 4
$py -m exporter --checkpoint "$run/stage5/checkpoint" --out "$run/bundle" --buckets 500,1000,2000,3500
$py -m exporter.demo.evaluate --model "$run/bundle" --out "$run/stage5/checkpoint/evaluation.json"
$py -m exporter.demo.card --checkpoint "$run/stage5/checkpoint" --bundle "$run/bundle"
