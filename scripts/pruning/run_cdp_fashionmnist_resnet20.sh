#!/usr/bin/env bash
# Train a ResNet-20 baseline on Fashion-MNIST (if missing), then CDP one-shot
# prune it to 50 % of its FLOPs, fine-tune and export.
# Usage: bash scripts/pruning/run_cdp_fashionmnist_resnet20.sh [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
BASE_CONFIG="configs/baselines/resnet20_1xb128_fashionmnist.py"
PRUNE_CONFIG="configs/pruning/cdp_resnet20_1xb128_fashionmnist.py"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet20_1xb128_fashionmnist}"
WORK_DIR="${WORK_DIR:-work_dirs/cdp_resnet20_1xb128_fashionmnist}"
FLOPS_RATIO="${FLOPS_RATIO:-0.5}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
data_root_opts "$DATA_ROOT"
train_unless_done "$BASE_WORK_DIR/epoch_3.pth" "$BASE_CONFIG" "$BASE_WORK_DIR"
run_train "$PRUNE_CONFIG" --work-dir "$WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
    model.init_checkpoint="$BASE_WORK_DIR/epoch_3.pth" \
    model.target.ratio="$FLOPS_RATIO"
echo "report: $WORK_DIR/report.json"
