#!/usr/bin/env bash
# Hybrid search on a Fashion-MNIST ResNet-56, then train the best subnet.
# Usage: bash scripts/hybrid_search/run_hybrid_fashionmnist_resnet56.sh MODE
#   MODE: search | test_search_geatpy_discrete_inference | train | all | quick
# ---- paths and knobs (override from the environment) ------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
BASE_CONFIG="configs/baselines/resnet56_1xb128_fashionmnist.py"
SEARCH_CONFIG="configs/hybrid_search/hybrid_search_resnet56_1xb128_fashionmnist.py"
TRAIN_CONFIG="configs/hybrid_search/hybrid_train_resnet56_1xb128_fashionmnist.py"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet56_1xb128_fashionmnist}"
BASE_EPOCHS="${BASE_EPOCHS:-3}"
# N_TRIALS=100 WORKERS=1 TARGET=0.50 NGPUS=1 CKPT=... SUBNET_JSON=...
# -----------------------------------------------------------------------------
source "$(dirname "$0")/_hybrid_common.sh"
hybrid_main "${1:-all}"
