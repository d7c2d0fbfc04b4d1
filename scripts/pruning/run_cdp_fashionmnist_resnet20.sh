#!/usr/bin/env bash
# Train a ResNet-20 baseline on Fashion-MNIST (if missing), then CDP one-shot
# prune it to 50 % of its FLOPs, fine-tune and export.
# Usage: bash scripts/pruning/run_cdp_fashionmnist_resnet20.sh [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
BASE_CONFIG="configs/baselines/resnet20_1xb128_fashionmnist.py"
PRUNE_CONFIG="configs/pruning/cdp_resnet20_1xb128_fashionmnist.py"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet20_1xb128_fashionmnist}"
WORK_DIR="${WORK_DIR:-work_dirs/cdp_resnet20_1xb128_fashionmnist}"
FLOPS_RATIO="${FLOPS_RATIO:-0.5}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
cd "$ROOT"
DATA="train_dataloader.dataset.data_root=$DATA_ROOT val_dataloader.dataset.data_root=$DATA_ROOT test_dataloader.dataset.data_root=$DATA_ROOT"
run() {  # run CONFIG ARGS... on NGPUS processes
    if [ "$NGPUS" -gt 1 ]; then bash tools/dist_train.sh "$1" "$NGPUS" "${@:2}";
    else "$PYTHON" tools/train.py "$@"; fi
}
if [ ! -f "$BASE_WORK_DIR/epoch_3.pth" ]; then
    run "$BASE_CONFIG" --work-dir "$BASE_WORK_DIR" --cfg-options $DATA
fi
run "$PRUNE_CONFIG" --work-dir "$WORK_DIR" --cfg-options $DATA \
    model.init_checkpoint="$BASE_WORK_DIR/epoch_3.pth" \
    model.target.ratio="$FLOPS_RATIO"
echo "report: $WORK_DIR/report.json"
