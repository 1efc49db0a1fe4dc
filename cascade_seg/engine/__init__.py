"""Training/testing glue: safe checkpoint loading, hooks, runner construction, benchmark.

Importing this package allow-lists the globals an mmengine checkpoint needs for
``torch.load(weights_only=True)`` (see checkpoint.py); the tools import it.
"""
from .checkpoint import load_checkpoint, register_safe_globals
from .dump_results import DumpDetResults
from .hooks import CheckFiniteLossHook, NumClassesCheckHook, SavePredictionImagesHook
from .optim_wrapper import AutocastOptimWrapper
from .runner_utils import build_runner, load_config, save_metrics

register_safe_globals()

__all__ = ['register_safe_globals', 'load_checkpoint', 'CheckFiniteLossHook', 'NumClassesCheckHook',
           'SavePredictionImagesHook', 'DumpDetResults', 'AutocastOptimWrapper', 'build_runner',
           'load_config', 'save_metrics']
