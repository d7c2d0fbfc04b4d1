#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NGPUS [train.py args...]
# Runs NGPUS processes with torchrun (nccl on GPUs, gloo on CPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"
torchrun_tool "$2" train.py "$1" --launcher pytorch "${@:3}"
