#!/usr/bin/env bash
# Train a ResNet-56 baseline on Fashion-MNIST (if missing), write its block
# importance chart, then layer-prune it (CKA scores) to FLOPS_RATIO of its
# FLOPs, recalibrate BN, fine-tune and export. MERGE_TOL=t also merges the
# blocks whose residual branch is nearly linear (merge error <= t) into one
# conv each (FLOPs-aware: merges that add MACs cost extra removals).
# Usage: [MERGE_TOL=0.25] bash scripts/fusion/run_fusion_fashionmnist_resnet56.sh [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
BASE_CONFIG="configs/baselines/resnet56_1xb128_fashionmnist.py"
FUSION_CONFIG="${FUSION_CONFIG:-configs/fusion/fusion_resnet56_1xb128_fashionmnist.py}"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet56_1xb128_fashionmnist}"
WORK_DIR="${WORK_DIR:-work_dirs/fusion_resnet56_1xb128_fashionmnist}"
METRIC="${METRIC:-block_cka}"
FLOPS_RATIO="${FLOPS_RATIO:-0.5}"
MERGE_TOL="${MERGE_TOL:-}"
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
"$PYTHON" tools/analysis/layer_importance.py "$BASE_CONFIG" \
    "$BASE_WORK_DIR/epoch_3.pth" --out-dir "$WORK_DIR/layer_importance" \
    --cfg-options $DATA
MERGE=""
if [ -n "$MERGE_TOL" ]; then MERGE="model.merging.linear_tol=$MERGE_TOL"; fi
run "$FUSION_CONFIG" --work-dir "$WORK_DIR" --cfg-options $DATA \
    model.init_checkpoint="$BASE_WORK_DIR/epoch_3.pth" \
    model.metric.type="$METRIC" model.target.mode=flops \
    model.target.ratio="$FLOPS_RATIO" $MERGE
echo "report: $WORK_DIR/report.json"
