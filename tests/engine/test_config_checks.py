"""Config fields are type checked (engine/config_checks.py)."""
import pytest

from mmrazor_ext.engine import ConfigFieldError, check_config


def test_config_fields_are_type_checked():
    from mmengine.config import Config
    cfg = Config(dict(train_cfg=dict(n_trials='abc'),
                      train_dataloader=dict(batch_size=8)))
    with pytest.raises(ConfigFieldError,
                       match=r"train_cfg\.n_trials must be an integer >= 1, "
                             r"got 'abc' \(str\)"):
        check_config(cfg)
    cfg.train_cfg.n_trials = 5
    check_config(cfg)
    for field, bad in (('train_cfg.max_epochs', 1.5),
                       ('train_cfg.max_flops_ratio', 2),
                       ('train_dataloader.num_workers', -1),
                       ('randomness.seed', '0'), ('load_strict', 'yes')):
        cfg = Config(dict())
        cfg.merge_from_dict({field: bad})
        with pytest.raises(ConfigFieldError, match=field.split('.')[-1]):
            check_config(cfg)
