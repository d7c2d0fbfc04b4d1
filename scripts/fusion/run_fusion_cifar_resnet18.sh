#!/usr/bin/env bash
# Layer pruning ("fusion") of a CIFAR-10 ResNet-18 (CIFAR stem), by MODE:
#   baseline             train the ResNet-18 baseline (CIFAR-10 schedule)
#   test_fusion_init     build the algorithm on an untrained model, list the
#                        residual blocks (removable or why not) and their
#                        importance; no training (a quick smoke test)
#   importance           block importance CSV + PNG of a trained baseline
#   fusion               remove NUM_BLOCKS blocks, fine-tune, export
#   fusion_channel       depth then width: remove blocks, then L1 channel
#                        pruning of the shallower model to CHANNEL_RATIO
#   fusion_merge         remove NUM_BLOCKS blocks and merge the remaining
#                        blocks whose branch is nearly linear (merge error
#                        <= MERGE_TOL) into one conv each
#   export_onnx          ONNX export (BN folded) of the fusion result
# Usage: bash scripts/fusion/run_fusion_cifar_resnet18.sh MODE [NGPUS]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
DATA_ROOT="${DATA_ROOT:-data/cifar10}"
BASE_CONFIG="configs/baselines/resnet56_1xb128_cifar10.py"
FUSION_CONFIG="configs/fusion/fusion_resnet56_1xb128_cifar10.py"
# ResNet-18 in the CIFAR layout (ResNet_CIFAR depth 18, 4 stages, 512 ch.)
ARCH_OPTS="model.backbone.depth=18 model.backbone.num_stages=4 model.backbone.strides=(1,2,2,2) model.backbone.dilations=(1,1,1,1) model.backbone.out_indices=(3,) model.backbone.stem_channels=64 model.backbone.base_channels=64 model.head.in_channels=512"
BASE_WORK_DIR="${BASE_WORK_DIR:-work_dirs/resnet18_1xb128_cifar10}"
WORK_DIR="${WORK_DIR:-work_dirs/fusion_resnet18_1xb128_cifar10}"
CKPT="${CKPT:-$BASE_WORK_DIR/epoch_200.pth}"
METRIC="${METRIC:-block_cka}"
NUM_BLOCKS="${NUM_BLOCKS:-2}"
CHANNEL_RATIO="${CHANNEL_RATIO:-0.7}"
MERGE_TOL="${MERGE_TOL:-0.25}"
MODE="${1:?usage: $0 MODE [NGPUS]}"
NGPUS="${2:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
data_root_opts "$DATA_ROOT"
ALGO_ARCH="${ARCH_OPTS//model./model.architecture.}"
FUSION_OPTS="model.init_checkpoint=$CKPT model.metric.type=$METRIC model.target.mode=num_blocks model.target.num=$NUM_BLOCKS"
case "$MODE" in
  test_fusion_init)
    "$PYTHON" - "$FUSION_CONFIG" $ALGO_ARCH <<'PY'
import sys
import torch
from mmengine.config import Config
from mmrazor_ext.registry import MODELS, register_all_modules
from mmrazor_ext.utils.config import parse_cfg_options
register_all_modules()
cfg = Config.fromfile(sys.argv[1])
cfg.merge_from_dict(parse_cfg_options(sys.argv[2:]))
cfg.model.init_checkpoint = None
algo = MODELS.build(cfg.model)
blocks = algo.blocks()
from mmrazor_ext.registry import METRICS
scores = METRICS.get('block_weight_norm')()(blocks, algo.architecture)
from mmrazor_ext.graph import find_mergeable
merge = find_mergeable(blocks)
for name, b in blocks.blocks.items():
    m = merge[name]
    how = f'merge->{m.kernel_size[0]}x{m.kernel_size[1]}' if m.mergeable \
        else 'no merge'
    print(f'{name:24s} removable={b.removable!s:5s} '
          f'weight_norm={scores[name]:.3f} {how:12s} {b.reason}')
print(f'{len(blocks.removable)}/{len(blocks.blocks)} removable; FLOPs '
      f"{algo.complexity()['flops'] / 1e6:.1f} M; candidates for "
      f"removal_mode={algo.removal_mode}: {algo.candidates(blocks)}")
PY
    ;;
  baseline)
    run_train "$BASE_CONFIG" --work-dir "$BASE_WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
        $ARCH_OPTS ;;
  importance)
    "$PYTHON" tools/analysis/layer_importance.py "$BASE_CONFIG" "$CKPT" \
        --out-dir "$WORK_DIR/layer_importance" --cfg-options "${DATA_OPTS[@]}" $ARCH_OPTS ;;
  fusion)
    run_train "$FUSION_CONFIG" --work-dir "$WORK_DIR" --cfg-options "${DATA_OPTS[@]}" \
        $ALGO_ARCH $FUSION_OPTS ;;
  fusion_channel)
    run_train "$FUSION_CONFIG" --work-dir "$WORK_DIR/channel" --cfg-options "${DATA_OPTS[@]}" \
        $ALGO_ARCH $FUSION_OPTS \
        model.channel_pruning.metric.type=l1 \
        model.channel_pruning.target.mode=flops \
        model.channel_pruning.target.ratio="$CHANNEL_RATIO" ;;
  fusion_merge)
    run_train "$FUSION_CONFIG" --work-dir "$WORK_DIR/merge" --cfg-options "${DATA_OPTS[@]}" \
        $ALGO_ARCH $FUSION_OPTS model.merging.linear_tol="$MERGE_TOL" ;;
  export_onnx)
    "$PYTHON" tools/deploy/export_onnx.py "$BASE_CONFIG" \
        --subnet "$WORK_DIR/subnet.json" --out "$WORK_DIR/model.onnx" \
        --cfg-options $ARCH_OPTS ;;
  *) echo "unknown MODE $MODE" >&2; exit 2 ;;
esac
