# Shared by the scripts/*/*.sh (sourced, not run): the repository root, the
# project's Python, the --cfg-options every script builds, and run_train.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

# data_root_opts DIR: sets the array DATA_OPTS, --cfg-options pointing the
# train, val and test loaders at DIR, followed by the words of $DATA_EXTRA
# (extra dataset options, e.g. "train_dataloader.dataset.verify_md5=False").
data_root_opts() {
    local extra=()
    read -r -a extra <<< "${DATA_EXTRA:-}"
    DATA_OPTS=("train_dataloader.dataset.data_root=$1"
               "val_dataloader.dataset.data_root=$1"
               "test_dataloader.dataset.data_root=$1" "${extra[@]}")
}

# tiny_loader_opts BATCH: sets the array TINY_LOADER_OPTS, loaders for tiny
# data in smoke runs and tests: training batches of BATCH, no worker
# processes.
tiny_loader_opts() {
    TINY_LOADER_OPTS=("train_dataloader.batch_size=$1")
    local split
    for split in train val test; do
        TINY_LOADER_OPTS+=("${split}_dataloader.num_workers=0"
                           "${split}_dataloader.persistent_workers=False")
    done
}

# run_train CONFIG ARGS...: tools/train.py, through torchrun
# (tools/dist_train.sh) when NGPUS > 1.
run_train() {
    if [ "${NGPUS:-1}" -gt 1 ]; then
        bash "$ROOT/tools/dist_train.sh" "$1" "$NGPUS" "${@:2}"
    else
        "$PYTHON" "$ROOT/tools/train.py" "$@"
    fi
}

# train_unless_done CKPT CONFIG WORK_DIR [OPTS...]: unless the checkpoint
# CKPT exists, train CONFIG into WORK_DIR on the data of DATA_OPTS (see
# data_root_opts) with the further --cfg-options OPTS.
train_unless_done() {
    if [ ! -f "$1" ]; then
        run_train "$2" --work-dir "$3" --cfg-options "${DATA_OPTS[@]}" "${@:4}"
    fi
}
