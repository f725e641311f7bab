#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), from the repository root, after scripts/gpu_deps.sh
# here:   run(command="bash scripts/gpu_check.sh", carry=[".gpu_deps"], timeout_s=600)
#
# 1. unpacks the carried Debian packages (Eigen, nlohmann-json, GoogleTest) into /tmp/vgdeps;
# 2. finds cuDNN (system, or the nvidia-cudnn wheel beside PyTorch);
# 3. builds vidgrad with CUDA for sm_90 and without the video pipeline (no FFmpeg there);
# 4. runs the CUDA tests (parity of every op, SEVNet-G8, GPU training) and the CPU suite;
# 5. benchmarks SEVNet-G8 steps against PyTorch on the same GPU, same run.
# Everything is logged to $OUT/gpu_check.log (or ./gpu_check.log without $OUT).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$ROOT}"
LOG="$OUT_DIR/gpu_check.log"
JOBS="${JOBS:-$(nproc)}"
exec > >(tee "$LOG") 2>&1
say() { printf '\n[gpu_check] %s\n' "$*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
nvcc --version | tail -1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" || true

say "dependencies"
DEPS=/tmp/vgdeps
mkdir -p "$DEPS"
for f in "$ROOT"/.gpu_deps/*.deb; do dpkg -x "$f" "$DEPS"; done
CUDNN=/tmp/vgcudnn
mkdir -p "$CUDNN/include" "$CUDNN/lib"
if [ ! -e /usr/include/cudnn.h ] && [ ! -e /usr/local/cuda/include/cudnn.h ]; then
  WHEEL="$(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null || true)"
  if [ -n "$WHEEL" ]; then
    ln -sf "$WHEEL"/include/* "$CUDNN/include/"
    for l in "$WHEEL"/lib/libcudnn*.so.*; do ln -sf "$l" "$CUDNN/lib/"; done
    ln -sf "$(ls "$WHEEL"/lib/libcudnn.so.* | head -1)" "$CUDNN/lib/libcudnn.so"
    export LD_LIBRARY_PATH="$WHEEL/lib:${LD_LIBRARY_PATH:-}"
    echo "cuDNN from the wheel at $WHEEL"
  fi
fi
export CUDNN_ROOT="$CUDNN"

say "build (CUDA on, video off, $JOBS jobs)"
BUILD="$ROOT/build-gpu"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DVIDGRAD_CUDA=ON -DVIDGRAD_VIDEO=OFF \
  -DVIDGRAD_BUILD_EXAMPLES=OFF -DCMAKE_PREFIX_PATH="$DEPS/usr" \
  -DGTest_DIR="$DEPS/usr/lib/x86_64-linux-gnu/cmake/GTest" || exit 1
cmake --build "$BUILD" -j "$JOBS" || exit 1

say "CUDA tests"
"$BUILD/tests/cuda_test" --gtest_brief=0
CUDA_RC=$?

say "CPU suite (same build)"
OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$BUILD" -j "$JOBS" --output-on-failure -E '^Cuda' | tail -5

say "SEVNet-G8 on the GPU: vidgrad vs PyTorch, same run (median of 10 steps after 3 warm-up)"
for mode in "" "--inference"; do
  for cfg in "1 16 224" "8 16 224" "1 8 112" "16 8 112"; do
    set -- $cfg
    args=(--batch "$1" --frames "$2" --size "$3" --steps 10 --warmup 3 $mode)
    printf -- '--- batch %s %sx%sx%s %s\n' "$1" "$2" "$3" "$3" "${mode:-training}"
    "$BUILD/bench/sevnet_bench" --device cuda "${args[@]}"
    python3 "$ROOT/bench/pytorch_sevnet.py" --device cuda "${args[@]}"
  done
done
say "done; CUDA tests exit code $CUDA_RC"
exit $CUDA_RC
