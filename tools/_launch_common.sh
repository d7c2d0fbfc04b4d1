# Shared by dist_train.sh, dist_test.sh and train_sparse.sh (sourced, not
# run): the repository root, the Python to use (the project's .venv unless
# PYTHON names another) on PYTHONPATH with the repository, and torchrun_tool.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
[ -x "$ROOT/.venv/bin/python" ] && [ "$PYTHON" = python ] && PYTHON="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"

# torchrun_tool NGPUS TOOL ARGS...: replace this shell by NGPUS processes of
# tools/TOOL (with ARGS) under torch.distributed.run; NNODES, NODE_RANK,
# PORT and MASTER_ADDR from the environment.
torchrun_tool() {
    exec "$PYTHON" -m torch.distributed.run \
        --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --nproc_per_node="$1" --master_port="${PORT:-29500}" \
        "$ROOT/tools/$2" "${@:3}"
}
