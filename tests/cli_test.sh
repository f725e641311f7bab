#!/usr/bin/env bash
# Tests of the vidgrad command-line tool, run by ctest: usage errors, info, plotting, and
# that a run stopped part-way and resumed ends bit-identical to an uninterrupted run.
#   tests/cli_test.sh <path to vidgrad> <scratch dir>
set -uo pipefail
VG="$1"
WORK="$2"
rm -rf "$WORK"
mkdir -p "$WORK"
passed=0
failed=0
check() {  # check NAME COMMAND...: the command must succeed
  local name="$1"; shift
  if "$@" > "$WORK/out.txt" 2>&1; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; cat "$WORK/out.txt"; fi
}
expect_error() {  # expect_error NAME FRAGMENT COMMAND...: non-zero exit and FRAGMENT in the output
  local name="$1" fragment="$2"; shift 2
  if "$@" > "$WORK/out.txt" 2>&1; then
    failed=$((failed + 1)); echo "FAILED: $name (exit 0)"; cat "$WORK/out.txt"
  elif grep -qF -- "$fragment" "$WORK/out.txt"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); echo "FAILED: $name (no '$fragment' in output)"; cat "$WORK/out.txt"
  fi
}

check "version" bash -c "'$VG' --version | grep -q '^vidgrad [0-9]'"
check "help lists the commands" bash -c "'$VG' --help | grep -q gen-synthetic"
check "info reproduces SEVNet-G8's parameter count" bash -c "'$VG' info --model sevnet_g8 --classes 174 --frames 4 --size 64 | grep -q '4,427,662'"
expect_error "unknown model" "unknown model 'sevnet_g5'" "$VG" info --model sevnet_g5
expect_error "no subcommand" "subcommand" "$VG"
expect_error "missing data root" "'data'" "$VG" train epochs=1
expect_error "unknown config key" "unknown key 'epoch'" "$VG" train data=x epoch=3
expect_error "wrong config type" "'epochs' has the wrong type" "$VG" train data=x epochs='"ten"'
echo '{"epochs": 2,' > "$WORK/bad.json"
expect_error "malformed config file" "not valid JSON" "$VG" train --config "$WORK/bad.json"
expect_error "missing config file" "bad.jsn" "$VG" train --config "$WORK/bad.jsn"
expect_error "missing dataset" "cannot find" "$VG" train data="$WORK/nowhere" output="$WORK/r"
expect_error "bad device in config" "'gpu' is not a device" "$VG" train data=x device=gpu
expect_error "bad bench device" "expected cpu, cuda or cuda:N" "$VG" bench --device cuda:x --size 32 --frames 2

check "gen-synthetic" "$VG" gen-synthetic --out "$WORK/data" --train-per-class 2 --val-per-class 1 --width 32 --height 24 --frames 8
args=(data="$WORK/data" frames=4 crop=16 resize_min=16 resize_max=20 test_resize=16 batch_size=4 epochs=2
      warmup_epochs=1 max_train_batches=3 dropout=0.3 workers=2 threads=2 lr_per_8=0.02)
# The checkpoint records the output folder, so both runs use the same one in turn.
check "run stopped after 4 steps" "$VG" train "${args[@]}" output="$WORK/run" --stop-after-steps 4
check "stopped run left a mid-epoch checkpoint" test -f "$WORK/run/last.safetensors"
check "resumed run" "$VG" train "${args[@]}" output="$WORK/run" --resume
mv "$WORK/run" "$WORK/resumed"
check "straight run" "$VG" train "${args[@]}" output="$WORK/run"
mv "$WORK/run" "$WORK/straight"
check "resumed checkpoint is bit-identical" cmp "$WORK/straight/last.safetensors" "$WORK/resumed/last.safetensors"
check "resumed step metrics are identical" cmp <(cut -d, -f1-7 "$WORK/straight/steps.csv") <(cut -d, -f1-7 "$WORK/resumed/steps.csv")
mv "$WORK/resumed" "$WORK/run"
expect_error "resume with another config" "configuration differs" "$VG" train "${args[@]}" epochs=3 output="$WORK/run" --resume
check "metrics files" test -s "$WORK/straight/steps.csv" -a -s "$WORK/straight/epochs.csv" -a -s "$WORK/straight/config.json"
check "training curves plotted" test -s "$WORK/straight/curves.png"
check "plot on demand" "$VG" plot "$WORK/straight"
check "eval" "$VG" eval --checkpoint "$WORK/straight/last.safetensors" --json "$WORK/eval.json"
check "eval wrote confusion matrix and json" test -s "$WORK/straight/confusion.csv" -a -s "$WORK/eval.json"
check "multi-view eval" "$VG" eval --checkpoint "$WORK/straight/last.safetensors" --views 2x3
expect_error "bad views" "--views must be TxS" "$VG" eval --checkpoint "$WORK/straight/last.safetensors" --views 2x2
check "predict" bash -c "'$VG' predict --checkpoint '$WORK/straight/last.safetensors' '$WORK/data/videos/1.webm' | grep -q '%'"
printf 'not a video' > "$WORK/bad.webm"
expect_error "predict on a bad file" "bad.webm" "$VG" predict --checkpoint "$WORK/straight/last.safetensors" "$WORK/bad.webm"
check "bench prints the median, the spread and clips/s" bash -c "'$VG' bench --model sevnet_g6 --batch 1 --frames 2 \
  --size 32 --steps 3 --warmup 0 | grep -Eq 'median [0-9.]+ s/step over 3 steps \([0-9.]+-[0-9.]+\), [0-9.]+ clips/s'"

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
