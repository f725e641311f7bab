#!/usr/bin/env bash
# The one entry point on a fresh Debian 12 machine: installs what vidgrad needs with
# apt-get, configures and builds, then runs the demo, the tests or the benchmarks.
#
#   scripts/setup.sh run     install, build, run the demo: synthetic dataset -> train SEVNet-G8
#                            -> evaluate (also time-reversed) -> predict (scripts/demo.sh)
#   scripts/setup.sh test    install, build, run the whole test suite with ctest
#   scripts/setup.sh bench   install, build, run the conv3d benchmark
#   scripts/setup.sh build   install and build only
#   scripts/setup.sh deps    install only
#
# Environment: BUILD_DIR (default ./build), JOBS (parallel compile jobs, default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-2}"
PACKAGES=(build-essential cmake libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
  pkg-config libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libturbojpeg0-dev ffmpeg
  libcli11-dev gnuplot-nox)

log() { printf '[setup] %s\n' "$*"; }

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "all Debian packages present"
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  log "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {  # build [target]: everything, or one target
  log "configuring in $BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  log "building ${1:-everything} with $JOBS jobs"
  cmake --build "$BUILD_DIR" -j "$JOBS" ${1:+--target "$1"}
}

mode="${1:-run}"
case "$mode" in
  deps) install_deps ;;
  build) install_deps; build ;;
  test)
    install_deps
    build
    log "running the test suite"
    # Two tests at a time on two cores, each with two OpenMP threads: idle threads must
    # sleep, not spin, or they take the cores the other test computes on (a finite-
    # difference check of thousands of small convs ran 10x longer spinning). ctest passes
    # its environment on; tests/CMakeLists.txt sets OMP_NUM_THREADS per test.
    OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2
    ;;
  run)
    install_deps
    build vidgrad_cli
    log "running the demo"
    VIDGRAD="$BUILD_DIR/tools/vidgrad" bash "$ROOT/scripts/demo.sh"
    ;;
  bench)
    install_deps
    build
    "$BUILD_DIR/bench/conv3d_bench" "${@:2}"
    ;;
  *)
    echo "usage: scripts/setup.sh [run|test|bench|build|deps]" >&2
    exit 2
    ;;
esac
