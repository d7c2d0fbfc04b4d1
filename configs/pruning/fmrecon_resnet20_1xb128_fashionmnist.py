# One-shot pruning with ThiNet/AMC feature-map reconstruction scores.
_base_ = ['./l1_resnet20_1xb128_fashionmnist.py']

model = dict(metric=dict(_delete_=True, type='fm_reconstruction',
                         n_points_per_fm=10),
             metric_batches=10)
