#!/usr/bin/env bash
# Sparse training (MSBench's train_sparse.sh): the config carries a
# SparsityHook in custom_hooks.
# Usage: tools/train_sparse.sh CONFIG NGPUS [train.py args...]
#          e.g. tools/train_sparse.sh configs/sparsity/amba_resnet20_1xb128_fashionmnist.py 1
#        tools/train_sparse.sh CONFIG NGPUS --resume [CKPT]   continue a run
#        tools/train_sparse.sh CONFIG NGPUS -e CKPT [test.py args...]
#          evaluate a sparse checkpoint (a Runner or a stage checkpoint)
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '4,9p' "$0"
    exit 1
fi
CONFIG=$1
NGPUS=$2
shift 2
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"   # ROOT, PYTHON
if [ "${1:-}" = "-e" ]; then
    shift
    exec "$PYTHON" "$ROOT/tools/test.py" "$CONFIG" "$@"
fi
if [ "$NGPUS" -gt 1 ]; then
    exec "$ROOT/tools/dist_train.sh" "$CONFIG" "$NGPUS" "$@"
fi
exec "$PYTHON" "$ROOT/tools/train.py" "$CONFIG" "$@"
