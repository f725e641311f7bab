#!/usr/bin/env bash
# vidgrad against PyTorch on the CPU, same network (bench/pytorch_sevnet.py mirrors
# models/sevnet.cpp), same threads, input and batch, measured in the same run.
#
#   bench/compare_cpu.sh [threads=2] [steps=3]
# Needs Debian's python3-torch (apt-get install python3-torch libopenblas0-pthread).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VIDGRAD="${VIDGRAD:-$ROOT/build/tools/vidgrad}"
PY="${PYTHON:-/usr/bin/python3}"
THREADS="${1:-2}"
STEPS="${2:-3}"
"$PY" -c "import torch" 2>/dev/null || { echo "compare_cpu: PyTorch not found for $PY (apt-get install python3-torch)" >&2; exit 1; }

rate() { sed -n 's/.* \([0-9.]*\) clips\/s.*/\1/p; s/^\([0-9.]*\) clips\/s.*/\1/p' | head -n 1; }
peak() { sed -n 's/^peak \([0-9]*\) KB/\1/p' | tail -n 1; }

printf "date %s, %s threads, %s timed steps after warm-up (median)\n" "$(date -u +%F)" "$THREADS" "$STEPS"
printf "%-10s %-6s %-9s %12s %12s %7s %14s %14s\n" mode batch input vidgrad pytorch ratio "vidgrad MiB" "pytorch MiB"
for mode in training inference; do
  flag=""
  [ "$mode" = inference ] && flag="--inference"
  for cfg in "1 16 224" "4 16 224" "1 8 112" "4 8 112"; do
    set -- $cfg
    v=$( { /usr/bin/time -f "peak %M KB" "$VIDGRAD" bench --model sevnet_g8 --batch "$1" --frames "$2" --size "$3" \
             --threads "$THREADS" --steps "$STEPS" --warmup 1 $flag; } 2>&1 )
    p=$( { /usr/bin/time -f "peak %M KB" "$PY" "$ROOT/bench/pytorch_sevnet.py" --model sevnet_g8 --batch "$1" --frames "$2" \
             --size "$3" --threads "$THREADS" --steps "$STEPS" --warmup 1 $flag; } 2>&1 )
    vr=$(echo "$v" | rate); pr=$(echo "$p" | rate)
    printf "%-10s %-6s %-9s %12s %12s %6.2fx %14d %14d\n" "$mode" "$1" "${2}x${3}" "$vr" "$pr" \
      "$(awk "BEGIN { print $vr / $pr }")" $(( $(echo "$v" | peak) / 1024 )) $(( $(echo "$p" | peak) / 1024 ))
  done
done
