#!/usr/bin/env bash
# The Knight-MC style pruning demo (MCPruning.prune_model -> load_pruned_model
# -> fine-tune -> save_pruned_model) on Fashion-MNIST with ResNet-20.
# Usage: [QUICK=1] [PRETRAINED=ckpt] bash scripts/amc/run_kmc_pruning_demo.sh
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
CONFIG="${CONFIG:-examples/kmc/resnet_cifar/pruning_config.yaml}"
WORK_DIR="${WORK_DIR:-work_dirs/kmc_pruning_demo}"
PRETRAINED="${PRETRAINED:-}"     # trained ResNet-20; empty: train a baseline
EPOCHS="${EPOCHS:-1}"            # fine-tune epochs
QUICK="${QUICK:-0}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON
cd "$ROOT"
ARGS=(--data-dir "$DATA_ROOT" --config "$CONFIG" --work-dir "$WORK_DIR"
      --epochs "$EPOCHS")
if [ -n "$PRETRAINED" ]; then ARGS+=(--pretrained "$PRETRAINED"); fi
if [ "$QUICK" = "1" ]; then ARGS+=(--quick); fi
"$PYTHON" examples/kmc/resnet_cifar/pruning_demo.py "${ARGS[@]}"
