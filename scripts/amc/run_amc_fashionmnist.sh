#!/usr/bin/env bash
# Train a ResNet baseline on Fashion-MNIST (if missing), search per-layer keep
# ratios with AMC (DDPG) at TARGET_DENSITY of its MACs, fine-tune the best
# episode in masked mode and export. Outputs in WORK_DIR: kmc-pruning.csv,
# amc-episodes.csv, amc_checkpoints/, pruned_model.pth, subnet.json,
# report.json.
# Usage: [DEPTH=56] [QUICK=1] bash scripts/amc/run_amc_fashionmnist.sh [NGPUS]
#   QUICK=1: tiny budget for smoke tests (1 baseline epoch, 2 + 2 episodes,
#   small batches, no worker processes); set DATA_ROOT to a small data set.
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
DEPTH="${DEPTH:-20}"                       # 20 (small budget) or 56 (paper)
BASE_CONFIG="configs/baselines/resnet${DEPTH}_1xb128_fashionmnist.py"
AMC_CONFIG="${AMC_CONFIG:-configs/amc/amc_resnet${DEPTH}_1xb128_fashionmnist.py}"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet${DEPTH}_1xb128_fashionmnist}"
BASE_CKPT="${BASE_CKPT:-$BASE_WORK_DIR/epoch_3.pth}"
WORK_DIR="${WORK_DIR:-work_dirs/amc_resnet${DEPTH}_1xb128_fashionmnist}"
TARGET_DENSITY="${TARGET_DENSITY:-0.5}"    # fraction of MACs kept
PROTOCOL="${PROTOCOL:-mac-constrained}"
METHOD="${METHOD:-}"                        # l1-rank / stochastic-l1-rank /
                                            # fm-reconstruction ('': config)
QUICK="${QUICK:-0}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
data_root_opts "$DATA_ROOT"
BASE_EXTRA=()
EXTRA=()
if [ "$QUICK" = "1" ]; then
    tiny_loader_opts 8
    SMALL=("${TINY_LOADER_OPTS[@]}" default_hooks.logger.interval=1)
    BASE_EXTRA=("${SMALL[@]}" train_cfg.max_epochs=1 param_scheduler.end=1)
    EXTRA=("${SMALL[@]}" model.amc_cfg.ddpg_cfg.warmup=2
           model.amc_cfg.ddpg_cfg.num_training_episodes=2
           model.amc_cfg.ddpg_cfg.bsize=16 model.calib_batches=2
           model.reward_batches=2 model.bn_recalib_batches=2)
    if [ ! -f "$BASE_CKPT" ]; then BASE_CKPT="$BASE_WORK_DIR/epoch_1.pth"; fi
fi
if [ -n "$METHOD" ]; then EXTRA+=("model.amc_cfg.pruning_method=$METHOD"); fi
train_unless_done "$BASE_CKPT" "$BASE_CONFIG" "$BASE_WORK_DIR" \
    "${BASE_EXTRA[@]}"
run_train "$AMC_CONFIG" --work-dir "$WORK_DIR" --cfg-options \
    "${DATA_OPTS[@]}" "${EXTRA[@]}" \
    model.init_checkpoint="$BASE_CKPT" \
    model.amc_cfg.target_density="$TARGET_DENSITY" \
    model.amc_cfg.protocol="$PROTOCOL"
echo "search: $WORK_DIR/kmc-pruning.csv  report: $WORK_DIR/report.json"
