#!/usr/bin/env bash
# vidgrad against PyTorch on the CPU, same network (bench/pytorch_sevnet.py mirrors
# models/sevnet.cpp), same threads, input and batch, measured in the same run.
#
#   bench/compare_cpu.sh [threads=2] [steps=3] [rounds=1] [warmup=3]
# Each configuration runs vidgrad and PyTorch alternately `rounds` times (each run:
# `warmup` untimed steps, then the median of `steps`); the table shows the median over
# rounds of each, their ratio, and the largest peak RSS of each. More rounds tame a noisy
# machine. Three warm-up steps: vidgrad's block cache (core/cpu_memory.cpp) mapped one more
# segment in each of the second, third and fourth training steps (batch 4, 8x112; the
# optimizer's momentum buffers appear in the first), and a fresh segment page-faults as it
# is first written, so one warm-up step timed that settling (the median of 3 absorbs the
# fourth step's); PyTorch gets the same warm-up
# (it ran no faster with three than with one: 11.8/11.5 vs 12.4/12.0 clips/s at batch 4,
# 8x112 training, 2026-11-21).
# Needs Debian's python3-torch (apt-get install python3-torch libopenblas0-pthread).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDGRAD="${VIDGRAD:-$ROOT/build/tools/vidgrad}"
PY="${PYTHON:-/usr/bin/python3}"
THREADS="${1:-2}"
STEPS="${2:-3}"
ROUNDS="${3:-1}"
WARMUP="${4:-3}"
"$PY" -c "import torch" 2>/dev/null || { echo "compare_cpu: PyTorch not found for $PY (apt-get install python3-torch)" >&2; exit 1; }

rate() { sed -n 's/.* \([0-9.]*\) clips\/s.*/\1/p; s/^\([0-9.]*\) clips\/s.*/\1/p' | head -n 1; }
peak() { sed -n 's/^peak \([0-9]*\) KB/\1/p' | tail -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf "date %s, %s threads, %s timed steps after %s warm-up steps (median), %s round(s) (median)\n" \
  "$(date -u +%F)" "$THREADS" "$STEPS" "$WARMUP" "$ROUNDS"
printf "%-10s %-6s %-9s %12s %12s %7s %14s %14s\n" mode batch input vidgrad pytorch ratio "vidgrad MiB" "pytorch MiB"
for mode in training inference; do
  flag=""
  [ "$mode" = inference ] && flag="--inference"
  for cfg in "1 16 224" "4 16 224" "1 8 112" "4 8 112"; do
    set -- $cfg
    vrates="" prates="" vpeak=0 ppeak=0
    for _ in $(seq "$ROUNDS"); do
      v=$( { /usr/bin/time -f "peak %M KB" "$VIDGRAD" bench --model sevnet_g8 --batch "$1" --frames "$2" --size "$3" \
               --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" $flag; } 2>&1 )
      p=$( { /usr/bin/time -f "peak %M KB" "$PY" "$ROOT/bench/pytorch_sevnet.py" --model sevnet_g8 --batch "$1" \
               --frames "$2" --size "$3" --threads "$THREADS" --steps "$STEPS" --warmup "$WARMUP" $flag; } 2>&1 )
      vrates+="$(echo "$v" | rate)"$'\n'
      prates+="$(echo "$p" | rate)"$'\n'
      vpeak=$(( $(echo "$v" | peak) > vpeak ? $(echo "$v" | peak) : vpeak ))
      ppeak=$(( $(echo "$p" | peak) > ppeak ? $(echo "$p" | peak) : ppeak ))
    done
    vr=$(printf "%s" "$vrates" | median); pr=$(printf "%s" "$prates" | median)
    printf "%-10s %-6s %-9s %12s %12s %6.2fx %14d %14d\n" "$mode" "$1" "${2}x${3}" "$vr" "$pr" \
      "$(awk "BEGIN { print $vr / $pr }")" $(( vpeak / 1024 )) $(( ppeak / 1024 ))
  done
done
