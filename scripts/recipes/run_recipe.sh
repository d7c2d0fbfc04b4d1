#!/usr/bin/env bash
# Run a compression recipe (configs/recipes/): train the dense baseline it
# starts from (if missing), then every stage of the recipe in one
# tools/train.py run (pruning -> sparsity -> BN folding -> ONNX). The stage
# table is printed; work_dirs/<recipe>/ gets recipe_report.json / .csv /
# .png, recipe_model.pth and recipe_model.onnx. A killed run continues in
# its stage with RESUME=1.
# Usage: [RECIPE=configs/recipes/...py] [RESUME=1] \
#        bash scripts/recipes/run_recipe.sh [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
RECIPE="${RECIPE:-configs/recipes/recipe_prune-2of4-fold-onnx_resnet20_1xb128_fashionmnist.py}"
NAME="$(basename "$RECIPE" .py)"
WORK_DIR="${WORK_DIR:-work_dirs/$NAME}"
case "$NAME" in
    *resnet56*) DEPTH=56 ;;
    *) DEPTH=20 ;;
esac
BASE_CONFIG="${BASE_CONFIG:-configs/baselines/resnet${DEPTH}_1xb128_fashionmnist.py}"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet${DEPTH}_1xb128_fashionmnist}"
RESUME="${RESUME:-}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
data_root_opts "$DATA_ROOT"
train_unless_done "$BASE_WORK_DIR/epoch_3.pth" "$BASE_CONFIG" "$BASE_WORK_DIR"
EXTRA=()
if [ -n "$RESUME" ]; then EXTRA=(--resume); fi
run_train "$RECIPE" --work-dir "$WORK_DIR" "${EXTRA[@]}" \
    --cfg-options "${DATA_OPTS[@]}" \
    model.init_checkpoint="$BASE_WORK_DIR/epoch_3.pth"
echo "report: $WORK_DIR/recipe_report.json"
