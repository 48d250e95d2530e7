#!/usr/bin/env bash
# scripts/build.sh BUILD_DIR [CMAKE OPTIONS...]: configure and build vlmtrain
# (Release, -Werror) into BUILD_DIR with every core of the machine.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$1"; shift
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DVLMTRAIN_WERROR=ON "$@"
cmake --build "$build" -j "$(nproc)"
