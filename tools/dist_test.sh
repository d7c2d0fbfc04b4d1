#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT NGPUS [test.py args...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch_common.sh"
torchrun_tool "$3" test.py "$1" "$2" --launcher pytorch "${@:4}"
