#!/usr/bin/env bash
# The main job's demo: generate a synthetic motion dataset (classes that only motion
# tells apart), train SEVNet-G8 on it on the CPU, evaluate on held-out videos, evaluate
# again on the same videos played backwards (scored against the time-reversed twin
# classes), and predict one video.
#
#   scripts/demo.sh            the full demo (requires >= 90% top-1, >= 80% on reversed clips)
#   scripts/demo.sh --quick    a few iterations, no accuracy requirement (CI)
#
# Environment: VIDGRAD (the vidgrad binary, default build/tools/vidgrad), DEMO_DIR
# (default demo/), THREADS (default: all cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDGRAD="${VIDGRAD:-$ROOT/build/tools/vidgrad}"
OUT="${DEMO_DIR:-$ROOT/demo}"
THREADS="${THREADS:-0}"
quick=0
[ "${1:-}" = "--quick" ] && quick=1

[ -x "$VIDGRAD" ] || { echo "demo: $VIDGRAD not found; build first (scripts/setup.sh build)" >&2; exit 1; }
rm -rf "$OUT"
start=$(date +%s)
say() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - start ))"; }

if [ $quick -eq 1 ]; then
  per_class=2; val_per_class=1; train_args=(epochs=1 warmup_epochs=0 max_train_batches=2 crop=32 resize_min=32 resize_max=36 test_resize=32 batch_size=4)
else
  per_class=60; val_per_class=10; train_args=(epochs=14 warmup_epochs=2 crop=48 resize_min=48 resize_max=56 test_resize=48 batch_size=8)
fi

say "generating the synthetic motion dataset"
"$VIDGRAD" gen-synthetic --out "$OUT/data" --train-per-class $per_class --val-per-class $val_per_class \
  --width 64 --height 48 --frames 16 --seed 1

say "training SEVNet-G8 on the CPU"
"$VIDGRAD" train data="$OUT/data" output="$OUT/run" model=sevnet_g8 frames=8 lr_per_8=0.05 dropout=0.2 \
  zero_init_last_bn=true workers=1 threads=$THREADS log_every=30 "${train_args[@]}"

require=()
require_rev=()
if [ $quick -eq 0 ]; then require=(--require-top1 0.90); require_rev=(--require-top1 0.80); fi

say "evaluating on the held-out videos"
"$VIDGRAD" eval --checkpoint "$OUT/run/best.safetensors" --json "$OUT/eval.json" "${require[@]}"

say "the same videos played backwards, scored against their time-reversed twin classes"
"$VIDGRAD" eval --checkpoint "$OUT/run/best.safetensors" --reverse --twin-map "$OUT/data/reversal_twins.json" \
  --confusion "$OUT/run/confusion_reversed.csv" --json "$OUT/eval_reversed.json" "${require_rev[@]}"

video=$(ls "$OUT/data/videos" | sort -n | tail -n 1)
say "predicting $video"
"$VIDGRAD" predict --checkpoint "$OUT/run/best.safetensors" "$OUT/data/videos/$video"

say "done: curves in $OUT/run/curves.png, metrics in $OUT/run/{steps,epochs}.csv"
