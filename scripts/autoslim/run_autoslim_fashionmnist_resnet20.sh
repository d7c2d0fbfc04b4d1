#!/usr/bin/env bash
# AutoSlim on Fashion-MNIST ResNet-20: slimmable (sandwich-rule) training, then
# greedy slimming to one subnet JSON per FLOPs target, then (optionally)
# training a searched subnet.
# Usage: bash scripts/autoslim/run_autoslim_fashionmnist_resnet20.sh MODE
#   MODE: train   slimmable training of the supernet
#         search  greedy slimming of the supernet (resumes when rerun)
#         retrain train the subnet of RETRAIN_TARGET from the supernet weights
#         all     train (if missing), search, retrain
#         quick   train + search in seconds on DATA_ROOT (tiny data; tests);
#                 then `quick_retrain` trains a subnet of that search
set -euo pipefail
# ---- paths and knobs (override from the environment) -------------------------
DATA_ROOT="${DATA_ROOT:-data/fashion_mnist}"
TRAIN_CONFIG="configs/autoslim/autoslim_resnet20_1xb128_fashionmnist.py"
SEARCH_CONFIG="configs/autoslim/autoslim_search_resnet20_1xb128_fashionmnist.py"
RETRAIN_CONFIG="configs/autoslim/autoslim_retrain_resnet20_1xb128_fashionmnist.py"
WORK_DIR="${WORK_DIR:-work_dirs/autoslim_resnet20_1xb128_fashionmnist}"
SEARCH_WORK_DIR="${SEARCH_WORK_DIR:-$WORK_DIR/search}"
RETRAIN_WORK_DIR="${RETRAIN_WORK_DIR:-$WORK_DIR/retrain}"
EPOCHS="${EPOCHS:-3}"                 # slimmable training epochs
INIT_CKPT="${INIT_CKPT:-}"            # optional: start from trained weights
MIN_RATIO="${MIN_RATIO:-0.35}"        # smallest kept fraction per space
TARGETS="${TARGETS:-[0.5,0.35]}"      # FLOPs fractions to search for
STEP="${STEP:-0.1}"                   # greedy step (fraction of a space)
BN_BATCHES="${BN_BATCHES:-10}"        # adaptive-BN batches per candidate
HELDOUT="${HELDOUT:-train}"           # held-out set: train (fixed subset) | val
HELDOUT_BATCHES="${HELDOUT_BATCHES:-8}"
RETRAIN_TARGET="${RETRAIN_TARGET:-0.50}"
RETRAIN_EPOCHS="${RETRAIN_EPOCHS:-3}"
NGPUS="${NGPUS:-1}"
# -------------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
MODE="${1:-all}"
cd "$ROOT"
data_root_opts "$DATA_ROOT"
TRAIN_OPTS=() SEARCH_OPTS=() RETRAIN_OPTS=() SEARCH_BATCH=128
if [ "$MODE" = quick ] || [ "$MODE" = quick_retrain ]; then
    # tiny data: small batches, no worker processes, one epoch, coarse search
    tiny_loader_opts 16
    LOADERS=("${TINY_LOADER_OPTS[@]}" default_hooks.logger.interval=1)
    EPOCHS=1 STEP=0.34 BN_BATCHES=1 HELDOUT_BATCHES=1 SEARCH_BATCH=8
    TRAIN_OPTS=("${LOADERS[@]}" param_scheduler.pct_start=0.5)
    SEARCH_OPTS=("${LOADERS[@]}")
    RETRAIN_OPTS=("${LOADERS[@]}" param_scheduler.pct_start=0.5)
    RETRAIN_EPOCHS=1
fi
SUPERNET="$WORK_DIR/epoch_${EPOCHS}.pth"

do_train() {
    local init=()
    [ -n "$INIT_CKPT" ] && init=("model.init_checkpoint=$INIT_CKPT")
    run_train "$TRAIN_CONFIG" --work-dir "$WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
        "${TRAIN_OPTS[@]}" train_cfg.max_epochs="$EPOCHS" \
        param_scheduler.end="$EPOCHS" model.min_keep_ratio="$MIN_RATIO" "${init[@]}"
}
do_search() {
    # single process: the search is deterministic and cheap next to training
    "$PYTHON" tools/train.py "$SEARCH_CONFIG" --work-dir "$SEARCH_WORK_DIR" \
        --cfg-options "${DATA_OPTS[@]}" "${SEARCH_OPTS[@]}" \
        model.init_checkpoint="$SUPERNET" model.min_keep_ratio="$MIN_RATIO" \
        "train_cfg.target_flops_ratios=$TARGETS" train_cfg.step="$STEP" \
        train_cfg.bn_batches="$BN_BATCHES" train_cfg.heldout="$HELDOUT" \
        train_cfg.heldout_batches="$HELDOUT_BATCHES" \
        train_cfg.batch_size="$SEARCH_BATCH"
    echo "search results: $SEARCH_WORK_DIR/autoslim_search.json"
}
do_retrain() {
    run_train "$RETRAIN_CONFIG" --work-dir "$RETRAIN_WORK_DIR" --cfg-options \
        "${DATA_OPTS[@]}" "${RETRAIN_OPTS[@]}" \
        model.init_checkpoint="$SEARCH_WORK_DIR/supernet.pth" \
        model.subnet="$SEARCH_WORK_DIR/subnet_flops${RETRAIN_TARGET}.json" \
        train_cfg.max_epochs="$RETRAIN_EPOCHS" param_scheduler.end="$RETRAIN_EPOCHS"
    echo "trained subnet: $RETRAIN_WORK_DIR"
}
case "$MODE" in
    train) do_train ;;
    search) do_search ;;
    retrain) do_retrain ;;
    all) [ -f "$SUPERNET" ] || do_train; do_search; do_retrain ;;
    quick) do_train; do_search ;;
    quick_retrain) do_retrain ;;
    *) echo "unknown mode '$MODE' (train, search, retrain, all, quick," \
            "quick_retrain)" >&2
       exit 2 ;;
esac
