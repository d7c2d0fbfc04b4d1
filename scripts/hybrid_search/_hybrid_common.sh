# Shared body of the run_hybrid_*.sh scripts (sourced, not run). The caller
# sets BASE_CONFIG, SEARCH_CONFIG, TRAIN_CONFIG, BASE_WORK_DIR, BASE_EPOCHS
# and DATA_ROOT, then calls hybrid_main MODE.
#
# Modes:
#   search | test_search_geatpy_discrete_inference  NSGA-II search (resumes)
#   train                                           train the searched subnet
#   all                                             baseline (if missing),
#                                                   search, train
#   quick                                           all, in seconds, on tiny
#                                                   data (tests, smoke runs)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
N_TRIALS="${N_TRIALS:-100}"
WORKERS="${WORKERS:-1}"
TARGET="${TARGET:-0.50}"
NGPUS="${NGPUS:-1}"

hybrid_main() {
    local mode="${1:-all}"
    cd "$ROOT"
    CKPT="${CKPT:-$BASE_WORK_DIR/epoch_${BASE_EPOCHS}.pth}"
    SEARCH_WORK_DIR="${SEARCH_WORK_DIR:-work_dirs/$(basename "$SEARCH_CONFIG" .py)}"
    TRAIN_WORK_DIR="${TRAIN_WORK_DIR:-work_dirs/$(basename "$TRAIN_CONFIG" .py)}"
    # results are written next to the searched checkpoint (seed convention)
    SUBNET_JSON="${SUBNET_JSON:-$(dirname "$CKPT")/subnet_flops${TARGET}.json}"
    data_root_opts "$DATA_ROOT"   # + DATA_EXTRA, extra dataset options
    local base_opts=() search_opts=() train_opts=()
    if [ "$mode" = quick ]; then
        tiny_loader_opts 8
        local loaders=("${TINY_LOADER_OPTS[@]}")
        base_opts=("${loaders[@]}" train_cfg.max_epochs="$BASE_EPOCHS"
                   param_scheduler.end="$BASE_EPOCHS")
        search_opts=("${loaders[@]}" train_cfg.bn_batches=2
                     train_cfg.eval_samples=32
                     train_cfg.sampler.population_size=4)
        train_opts=("${loaders[@]}" train_cfg.max_epochs=1
                    param_scheduler.end=1)
        N_TRIALS="${QUICK_TRIALS:-20}"
        mode=all
    fi
    case "$mode" in
        search|test_search_geatpy_discrete_inference|all) ;;
        train) ;;
        *) echo "unknown mode '$mode' (search, test_search_geatpy_discrete_inference, train, all, quick)" >&2; exit 2 ;;
    esac
    if [ "$mode" = all ] && [ ! -f "$CKPT" ]; then
        run_train "$BASE_CONFIG" --work-dir "$BASE_WORK_DIR" \
            --cfg-options "${DATA_OPTS[@]}" "${base_opts[@]}"
    fi
    if [ "$mode" != train ]; then
        "$PYTHON" tools/search.py "$SEARCH_CONFIG" --workers "$WORKERS" \
            --work-dir "$SEARCH_WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
            "${search_opts[@]}" model.init_checkpoint="$CKPT" \
            train_cfg.n_trials="$N_TRIALS" "train_cfg.targets=[$TARGET]"
        echo "search results: $(dirname "$CKPT")/search_results.json"
    fi
    if [ "$mode" != search ] && [ "$mode" != test_search_geatpy_discrete_inference ]; then
        run_train "$TRAIN_CONFIG" --work-dir "$TRAIN_WORK_DIR" \
            --cfg-options "${DATA_OPTS[@]}" "${train_opts[@]}" \
            model.init_checkpoint="$CKPT" model.subnet="$SUBNET_JSON"
        echo "trained subnet: $TRAIN_WORK_DIR"
    fi
}
