#!/usr/bin/env bash
# Train a ResNet-56 baseline on Fashion-MNIST (if missing), write its block
# importance chart, then layer-prune it (CKA scores) to FLOPS_RATIO of its
# FLOPs, recalibrate BN, fine-tune and export. MERGE_TOL=t also merges the
# blocks whose residual branch is nearly linear (merge error <= t) into one
# conv each (FLOPs-aware: merges that add MACs cost extra removals).
# Usage: [MERGE_TOL=0.25] bash scripts/fusion/run_fusion_fashionmnist_resnet56.sh [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
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
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
data_root_opts "$DATA_ROOT"
train_unless_done "$BASE_WORK_DIR/epoch_3.pth" "$BASE_CONFIG" "$BASE_WORK_DIR"
"$PYTHON" tools/analysis/layer_importance.py "$BASE_CONFIG" \
    "$BASE_WORK_DIR/epoch_3.pth" --out-dir "$WORK_DIR/layer_importance" \
    --cfg-options "${DATA_OPTS[@]}"
MERGE=()
if [ -n "$MERGE_TOL" ]; then MERGE=("model.merging.linear_tol=$MERGE_TOL"); fi
run_train "$FUSION_CONFIG" --work-dir "$WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
    model.init_checkpoint="$BASE_WORK_DIR/epoch_3.pth" \
    model.metric.type="$METRIC" model.target.mode=flops \
    model.target.ratio="$FLOPS_RATIO" "${MERGE[@]}"
echo "report: $WORK_DIR/report.json"
