"""Names mmpretrain's own code builds without a scope prefix.

``ImageClassifier`` defaults its data preprocessor to the bare name
``ClsDataPreprocessor``; under ``default_scope='mmrazor_ext'`` that lookup
lands in our registry, so the class is registered here under the same name.
"""
from mmpretrain.models.utils import ClsDataPreprocessor

from mmrazor_ext.registry import MODELS

MODELS.register_module(name='ClsDataPreprocessor', module=ClsDataPreprocessor)
