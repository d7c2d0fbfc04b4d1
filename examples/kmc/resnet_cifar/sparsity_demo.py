"""Knight-MC sparsity demo on Fashion-MNIST (ResNet-20), mirroring Knight's
``examples/cls/resnet50_cifar/sparsity_demo.py``.

1. load the data and a trained model (trains a short baseline when
   ``--pretrained`` is not given; shared with ``pruning_demo.py``);
2. define loss, optimizer and LR schedule as for ordinary training;
3. ``MCSparsity.sparse_model(need_args)`` masks the weights listed under
   ``network`` (``sparsity_config.yaml``: Cin32 x Cout64 blocks);
4. re-train: every ``optimizer.step()`` re-applies the masks;
5. ``MCSparsity.save_sparse_model(...)``, then
   ``MCSparsity.load_sparse_model(model, weight_file=...)`` into a fresh
   model, which must give the same outputs.

Run from the repository root::

    python examples/kmc/resnet_cifar/sparsity_demo.py              # ~5 min
    python examples/kmc/resnet_cifar/sparsity_demo.py --quick      # seconds
"""
# The user's own training code, next to this script (Python puts the
# script's folder first on the module search path), and the steps both
# demos share.
from demo_setup import demo_parser, log_file, prepare, retrain, write_results
from train_val import validate

from mmrazor_ext.apis import MCSparsity
from mmrazor_ext.models import CifarResNet


def parse_args(argv=None):
    return demo_parser(
        __doc__.splitlines()[0], config='sparsity_config.yaml', epochs=2,
        work_dir='work_dirs/kmc_sparsity_demo', epochs_help='re-train epochs',
        work_dir_help='logs/ and results.json go under it',
        quick_help='tiny budget: 512 training images, one epoch each').parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.epochs = 1
    # load the data set and the pre-trained model; loss, optimizer and
    # learning rate (as for ordinary training)
    setup = prepare(args)
    model = setup.model

    # sparsify the trained model (masks on the `network` weights)
    need_args = {'model_fn': model, 'optimizer': setup.optimizer,
                 'config_file': args.config}
    MCSparsity.sparse_model(need_args)
    sched = model.__dict__['_mc_sparsity']
    sparse = validate(model, setup.test_loader)
    print(f'sparsified {len(sched.layers)} layer(s), global sparsity '
          f'{100 * sched.global_sparsity():.1f} % of their weights: top-1 '
          f"{sparse['ind1']:.2f} %")

    # re-train the sparse model (optimizer.step() keeps the masks applied)
    result_info = retrain(setup, args.epochs, sparse, 're-train')

    # save the model with its sparsity masks, then load it as Knight does
    save_name = log_file(args.work_dir, 'sparse_retrained.pth')
    MCSparsity.save_sparse_model(model, save_name, extras={
        'acc1': result_info['ind1'], 'epochs': args.epochs})
    reloaded = CifarResNet(20, num_classes=10, in_channels=1)
    MCSparsity.load_sparse_model(reloaded, weight_file=save_name)
    again = validate(reloaded, setup.test_loader)
    print(f"reloaded ({save_name}): top-1 {again['ind1']:.2f} %")

    return write_results(args.work_dir, {
        'dense_top1': setup.dense['ind1'], 'sparse_top1': sparse['ind1'],
        'retrained_top1': result_info['ind1'], 'reloaded_top1': again['ind1'],
        'global_sparsity': sched.global_sparsity(),
        'layer_sparsity': dict(sched.layer_sparsity()), 'saved': save_name})


if __name__ == '__main__':
    main()
