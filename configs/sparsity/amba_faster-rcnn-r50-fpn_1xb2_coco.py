# Amba level pruning of a torchvision Faster R-CNN (ResNet-50 FPN, random
# init or load_from a dense detector) on COCO-format data, through the same
# SparsityHook as the classifiers (MSBench's faster_rcnn_r50_fpn_amba_sparse).
# One stage per sparsity_table entry, epochs_per_stage epochs each, the LR
# schedule restarting every stage; checkpoints per stage go to
# work_dir/sparse_ckpts/global_sparse_rate_{s}.pth.tar.
#   tools/train_sparse.sh configs/sparsity/amba_faster-rcnn-r50-fpn_1xb2_coco.py \
#       8 --cfg-options load_from=PATH_TO_DENSE_DETECTOR.pth
# Only the network the model's mode='tensor' path runs is traced and
# sparsified: backbone, FPN and the RPN head. The RoI box head (fc6 / fc7 and
# the box predictor) works on RoI-pooled proposals outside that path and
# stays dense.
# Everything else as in the Amba RetinaNet config.
_base_ = ['./amba_retinanet-r18-fpn_1xb2_coco.py']

model = dict(arch='faster_rcnn', backbone='resnet50')
optim_wrapper = dict(optimizer=dict(lr=0.02))
