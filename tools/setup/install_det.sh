#!/usr/bin/env bash
# The [det] extra: mmdet 3.3 with mmcv 2.1's compiled ops, built here.
#
# mmdet 3.3 needs mmcv>=2.0.0rc4,<2.2.0 with its C++ ops (NMS, RoIAlign).
# PyPI has no mmcv wheel, and the 2.1.0 sdist hard-codes -std=c++14/17,
# which this torch's headers refuse (they need C++20). This script builds
# the sdist's CPU ops with -std=c++20 (the only change), keeps the wheel in
# work_dirs/wheels/ (a rerun installs it in seconds), replaces mmcv-lite
# with it and installs mmdet. The first build takes 10-15 min on 2 cores.
#
# Usage: bash tools/setup/install_det.sh   (or: make det)
set -euo pipefail
PY=$(realpath -s "${PY:-.venv/bin/python}")
WHEELS=$(realpath -m "${WHEELS:-work_dirs/wheels}")
MMCV=2.1.0
MMDET=3.3.0

have_ops() {
    "$PY" - <<'PY' 2>/dev/null
import mmcv, mmcv.ops  # noqa: F401  (mmcv-lite has no mmcv.ops._ext)
from mmcv.ops import batched_nms  # noqa: F401
import mmdet  # noqa: F401
PY
}

if have_ops; then
    echo "[install_det] mmdet and mmcv's compiled ops are installed"
    exit 0
fi
mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/mmcv-$MMCV-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    "$PY" -m pip download "mmcv==$MMCV" --no-deps --no-binary :all: \
        --no-build-isolation -d "$src"
    tar -xzf "$src/mmcv-$MMCV.tar.gz" -C "$src"
    sed -i 's/-std=c++14/-std=c++20/g; s/-std=c++17/-std=c++20/g' \
        "$src/mmcv-$MMCV/setup.py"
    echo "[install_det] building mmcv $MMCV ops (CPU, C++20): 10-15 min on 2 cores"
    (cd "$src/mmcv-$MMCV" && MMCV_WITH_OPS=1 FORCE_CUDA=0 \
        MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip wheel . \
        --no-deps --no-build-isolation -w "$WHEELS")
    wheel=$(ls "$WHEELS"/mmcv-$MMCV-*.whl | head -n1)
fi
# both distributions own the mmcv/ package: remove the lite one first
"$PY" -m pip uninstall -y mmcv-lite mmcv >/dev/null 2>&1 || true
"$PY" -m pip install --no-deps "$wheel"
"$PY" -m pip install "mmdet==$MMDET"
have_ops || { echo "[install_det] mmcv.ops / mmdet still fail to import" >&2;
              exit 1; }
echo "[install_det] done: mmdet $MMDET, mmcv $MMCV with compiled ops"
