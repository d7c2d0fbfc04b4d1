"""FX tracing, channel dependency analysis, masking and physical export.

Public entry points: :func:`trace_model` (the project's only tracer),
:class:`ChannelGraph` (ChannelSpaces of a model), the layer kind table
(:class:`LayerKind`, :func:`register_layer_kind`: everything about one
prunable layer type), the rule registries :func:`register_module_rule` /
:func:`register_function_rule`, masking (:func:`apply_masks`) and export
(:func:`export_pruned`).
"""
from . import tensor_op_rules  # noqa: F401  (registers more op rules)
from .blocks import BlockAnalysis, BlockInfo, find_blocks, remove_blocks
from .channel_graph import (
                            ChannelGraph,
                            ChannelSpace,
                            LayerRecord,
                            TensorPath,
                            UnsupportedOpError,
                            run_tensor_forward,
)
from .detection_rules import TraceableView, register_traceable_view, traceable_view
from .export import (
                            ExportError,
                            check_equivalence,
                            export_pruned,
                            fuse_conv_bn,
                            register_exporter,
)
from .fold import find_conv_bn_pairs, fold_bn
from .layer_kinds import (
                            LAYER_KINDS,
                            LayerKind,
                            find_layer_kind,
                            get_layer_kind,
                            register_layer_kind,
                            unregister_layer_kind,
)
from .masking import apply_masks, remove_masks
from .merge import (
                            MergeInfo,
                            MergeMeter,
                            compose_branch,
                            find_mergeable,
                            merge_blocks,
                            merged_block_module,
)
from .op_table import OpTable
from .rules import register_function_rule, register_module_rule
from .tracer import TraceError, default_concrete_args, node_outputs_module, trace_model

__all__ = ['BlockAnalysis', 'BlockInfo', 'find_blocks', 'remove_blocks',
           'find_conv_bn_pairs', 'fold_bn',
           'LAYER_KINDS', 'LayerKind', 'find_layer_kind', 'get_layer_kind',
           'register_layer_kind', 'unregister_layer_kind',
           'OpTable', 'MergeInfo', 'MergeMeter', 'compose_branch', 'find_mergeable',
           'merge_blocks', 'merged_block_module',
           'ChannelGraph', 'ChannelSpace', 'ExportError', 'LayerRecord',
           'TensorPath',
           'TraceError', 'UnsupportedOpError', 'apply_masks',
           'check_equivalence', 'default_concrete_args', 'export_pruned',
           'fuse_conv_bn', 'register_exporter', 'register_function_rule',
           'register_module_rule', 'remove_masks', 'run_tensor_forward',
           'node_outputs_module', 'trace_model',
           'TraceableView', 'register_traceable_view', 'traceable_view']
