#!/usr/bin/env bash
# Train an ImageNet ResNet-18 subnet found by hybrid search (seed command:
#   bash scripts/hybrid_search/run_hybrid_in1k_resnet18_train.sh 0 <json> 1).
# Usage: bash scripts/hybrid_search/run_hybrid_in1k_resnet18_train.sh \
#            GPU_IDS JSON_PATH NGPUS
#   GPU_IDS   e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES; ignored on CPU)
#   JSON_PATH subnet JSON (search output subnet_flops*.json)
#   NGPUS     processes (torchrun through tools/dist_train.sh when > 1)
# Environment: CKPT (supernet weights to slice; empty = from scratch),
#   DATA_ROOT, WORK_DIR, EPOCHS, QUICK=1 (1 epoch, tiny loaders: smoke run),
#   DATA_EXTRA (extra --cfg-options for the datasets).
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
CONFIG="configs/hybrid_search/hybrid_train_resnet18_8xb32_in1k.py"
DATA_ROOT="${DATA_ROOT:-data/imagenet}"
CKPT="${CKPT:-}"
WORK_DIR="${WORK_DIR:-work_dirs/hybrid_train_resnet18_8xb32_in1k}"
EPOCHS="${EPOCHS:-100}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
if [ $# -ne 3 ]; then
    echo "usage: $0 GPU_IDS JSON_PATH NGPUS" >&2; exit 2
fi
GPU_IDS="$1"; JSON_PATH="$2"; NGPUS="$3"
if [ ! -f "$JSON_PATH" ]; then
    echo "subnet JSON not found: $JSON_PATH" >&2; exit 2
fi
cd "$ROOT"
export CUDA_VISIBLE_DEVICES="$GPU_IDS"
data_root_opts "$DATA_ROOT"
opts=("model.subnet=$JSON_PATH" "train_cfg.max_epochs=$EPOCHS")
if [ -n "$CKPT" ]; then
    opts+=("model.init_checkpoint=$CKPT")
else
    opts+=("model.from_scratch=True")
fi
if [ "${QUICK:-0}" = 1 ]; then
    tiny_loader_opts 2
    opts+=("${TINY_LOADER_OPTS[@]}" val_dataloader.batch_size=2
           train_cfg.max_epochs=1 param_scheduler.end=1)
fi
run_train "$CONFIG" --work-dir "$WORK_DIR" \
    --cfg-options "${DATA_OPTS[@]}" "${opts[@]}"
echo "trained subnet: $WORK_DIR"
