#!/usr/bin/env bash
# Iterative CDP pruning (3 cubic steps) of a trained ResNet-20.
# Usage: bash scripts/pruning/run_iterative_fashionmnist_resnet20.sh [NGPUS] [--resume]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
CONFIG="configs/pruning/iter_cdp_resnet20_1xb128_fashionmnist.py"
CHECKPOINT="${CHECKPOINT:-work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth}"
WORK_DIR="${WORK_DIR:-work_dirs/iter_cdp_resnet20_1xb128_fashionmnist}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
run_train "$CONFIG" --work-dir "$WORK_DIR" "${@:2}" \
    --cfg-options model.init_checkpoint="$CHECKPOINT"
