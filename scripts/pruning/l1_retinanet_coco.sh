#!/usr/bin/env bash
# One-shot L1 channel pruning of a torchvision RetinaNet (ResNet-18 FPN) to
# 50 % of its network MACs, masked fine-tuning, export of the pruned detector.
# With SYNTHETIC=1 it first writes a small synthetic COCO-format set
# (coloured boxes on noise) and runs a short smoke run on it at 128 px.
# Usage: [SYNTHETIC=1] [CHECKPOINT=dense.pth] \
#        bash scripts/pruning/l1_retinanet_coco.sh [NGPUS] [--resume]
set -euo pipefail
# ---- paths and knobs --------------------------------------------------------
CONFIG="configs/pruning/l1_retinanet-r18-fpn_1xb2_coco.py"
SYNTHETIC="${SYNTHETIC:-0}"
if [ "$SYNTHETIC" = 1 ]; then
    DATA_ROOT="${DATA_ROOT:-work_dirs/synthetic_coco}"
    WORK_DIR="${WORK_DIR:-work_dirs/l1_retinanet-r18-fpn_synthetic}"
else
    DATA_ROOT="${DATA_ROOT:-data/coco}"
    WORK_DIR="${WORK_DIR:-work_dirs/l1_retinanet-r18-fpn_1xb2_coco}"
fi
CHECKPOINT="${CHECKPOINT:-}"           # trained dense TorchvisionDetector
FLOPS_RATIO="${FLOPS_RATIO:-0.5}"
NGPUS="${1:-1}"
# -----------------------------------------------------------------------------
source "$(dirname "${BASH_SOURCE[0]}")/../_common.sh"   # ROOT, PYTHON, run_train
cd "$ROOT"
OPTS=("train_dataloader.dataset.data_root=$DATA_ROOT"
      "model.target.ratio=$FLOPS_RATIO")
if [ -n "$CHECKPOINT" ]; then
    OPTS+=("model.init_checkpoint=$CHECKPOINT")
fi
if [ "$SYNTHETIC" = 1 ]; then
    ANN="$DATA_ROOT/annotations/instances_train2017.json"
    if [ ! -f "$ANN" ]; then
        "$PYTHON" - "$DATA_ROOT" <<'PY'
import json, os, sys
import numpy as np
from PIL import Image
root, size, n = sys.argv[1], 128, 16
rng = np.random.default_rng(0)
os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
os.makedirs(os.path.join(root, 'train2017'), exist_ok=True)
images, anns = [], []
for i in range(n):
    img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = rng.integers(0, size // 2, size=2)
        w, h = rng.integers(12, size // 2, size=2)
        c = int(rng.integers(0, 3))
        img[y:y + h, x:x + w] = 80 * (c + 1)
        anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1,
                         bbox=[int(x), int(y), int(w), int(h)],
                         area=int(w * h), iscrowd=0))
    name = f'{i:012d}.png'
    Image.fromarray(img).save(os.path.join(root, 'train2017', name))
    images.append(dict(id=i + 1, file_name=name, width=size, height=size))
cats = [dict(id=i + 1, name=c) for i, c in enumerate(('red', 'green', 'blue'))]
tmp = os.path.join(root, 'annotations', 'instances_train2017.json.tmp')
with open(tmp, 'w') as f:  # atomic: a half-written set is never used
    json.dump(dict(images=images, annotations=anns, categories=cats), f)
os.replace(tmp, tmp[:-4])
PY
    fi
    # (train loader only: the config has no validation loop)
    OPTS+=("train_dataloader.num_workers=0"
           "train_dataloader.persistent_workers=False"
           "model.architecture.num_classes=3"
           "model.architecture.min_size=128" "model.architecture.max_size=128"
           "model.input_shape=[1,3,128,128]" "train_cfg.max_epochs=1"
           "param_scheduler.T_max=1" "param_scheduler.end=1")
fi
run_train "$CONFIG" --work-dir "$WORK_DIR" "${@:2}" --cfg-options "${OPTS[@]}"
echo "report: $WORK_DIR/report.json, pruned detector: $WORK_DIR/pruned_model.pth"
