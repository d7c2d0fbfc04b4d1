# COCO-format detection data for the torchvision detectors
# (TorchvisionDetector): images under data/coco/train2017 with the
# instances_train2017.json annotations, 2 images per GPU. No evaluation:
# boxes need mmdet's CocoMetric (the optional mmdet path, see
# configs/sparsity/amba_retinanet-r18-fpn_1xb2_coco.py).
data_root = 'data/coco'
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(type='CocoDetectionTV', data_root=data_root,
                 ann_file='annotations/instances_train2017.json',
                 img_dir='train2017'),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = None
val_cfg = None
val_evaluator = None
