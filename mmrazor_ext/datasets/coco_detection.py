"""A dependency-free COCO-format detection dataset for torchvision detectors.

mmdet's ``CocoDataset`` needs mmdet (and so compiled mmcv ops); this one
reads the same ``instances_*.json`` layout with the standard library and PIL
and yields what :class:`mmrazor_ext.models.TorchvisionDetector` consumes.
"""
import json
import os.path as osp

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmrazor_ext.registry import DATASETS


@DATASETS.register_module()
class CocoDetectionTV(Dataset):
    """COCO-format boxes for torchvision-style detectors.

    Args:
        data_root: Dataset folder.
        ann_file: COCO json, relative to ``data_root``.
        img_dir: Image folder, relative to ``data_root``.
        filter_empty: Drop images without (non-crowd) boxes.
        pipeline: Unused; accepted so mm configs can keep the key.

    Each item is ``dict(inputs=uint8 (3, H, W), data_samples=dict(boxes,
    labels, image_id))`` with ``boxes`` as (x1, y1, x2, y2) and ``labels``
    1-based in the order of ``categories`` (0 is background).
    """

    def __init__(self, data_root: str, ann_file: str, img_dir: str,
                 filter_empty: bool = True, pipeline=None):
        path = osp.join(data_root, ann_file)
        if not osp.isfile(path):
            raise FileNotFoundError(f'COCO annotations not found: {path}')
        with open(path) as f:
            coco = json.load(f)
        self.img_dir = osp.join(data_root, img_dir)
        self.cat2label = {c['id']: i + 1 for i, c in enumerate(coco['categories'])}
        self.metainfo = {'classes': tuple(c['name'] for c in coco['categories'])}
        boxes = {img['id']: [] for img in coco['images']}
        for ann in coco['annotations']:
            if ann.get('iscrowd', 0) or ann['bbox'][2] <= 0 or ann['bbox'][3] <= 0:
                continue
            boxes[ann['image_id']].append(ann)
        self.items = [(img, boxes[img['id']]) for img in coco['images']
                      if boxes[img['id']] or not filter_empty]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        img, anns = self.items[idx]
        with Image.open(osp.join(self.img_dir, img['file_name'])) as im:
            array = np.asarray(im.convert('RGB')).copy()
        inputs = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        xywh = torch.tensor([a['bbox'] for a in anns],
                            dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        labels = torch.tensor([self.cat2label[a['category_id']] for a in anns],
                              dtype=torch.int64)
        return dict(inputs=inputs, data_samples=dict(
            boxes=xyxy, labels=labels, image_id=img['id']))
