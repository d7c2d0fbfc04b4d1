#!/usr/bin/env bash
# CDP score heat-map, kept-ratio chart and CSV for a trained ResNet-20.
# Usage: bash scripts/pruning/visual_cdp_score_resnet20.sh [CHECKPOINT]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
CONFIG="configs/baselines/resnet20_1xb128_fashionmnist.py"
CHECKPOINT="${1:-work_dirs/resnet20_1xb128_fashionmnist/epoch_3.pth}"
OUT_DIR="${OUT_DIR:-work_dirs/cdp_vis_resnet20}"
BATCHES="${BATCHES:-20}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON
cd "$ROOT"
"$PYTHON" tools/visualization/visualize_cdp.py "$CONFIG" "$CHECKPOINT" \
    --out-dir "$OUT_DIR" --batches "$BATCHES" "${@:2}"
