#!/usr/bin/env bash
# Run HERE (the Debian development machine) before scripts/gpu_check.sh: downloads the
# header/static-library Debian packages the GPU machine lacks (it cannot fetch anything)
# into .gpu_deps/, which the device tool then carries (`carry: [".gpu_deps"]`).
# About 1.7 MB (measured 2026-11-21); .gpu_deps/ is git-ignored.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$ROOT/.gpu_deps"
cd "$ROOT/.gpu_deps"
rm -f ./*.deb
apt-get download libeigen3-dev nlohmann-json3-dev libgtest-dev libgmock-dev
ls -la
