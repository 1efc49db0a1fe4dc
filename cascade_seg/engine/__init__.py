"""Training/testing glue: safe checkpoint loading, crash-safe saving and exact resume,
hooks, runner construction, benchmark.

Importing this package allow-lists the globals an mmengine checkpoint needs for
``torch.load(weights_only=True)`` and routes mmengine's loading of local files
through it (see checkpoint.py); the tools import it.
"""
from .checkpoint import install_safe_loader, load_checkpoint, register_safe_globals
from .checkpoint_hook import AtomicCheckpointHook, StrictLoadHook
from .dump_results import DumpDetResults
from .hooks import CheckFiniteLossHook, NumClassesCheckHook, SavePredictionImagesHook
from .optim_wrapper import AutocastOptimWrapper
from .resume import EpochBasedTrainLoop, IterBasedTrainLoop
from .runner_utils import build_runner, close_distributed, load_config, save_metrics
from .trunk import SharedTrunkHook, load_trunk

install_safe_loader()

__all__ = ['register_safe_globals', 'load_checkpoint', 'CheckFiniteLossHook', 'NumClassesCheckHook',
           'SavePredictionImagesHook', 'DumpDetResults', 'AutocastOptimWrapper', 'build_runner',
           'load_config', 'save_metrics', 'install_safe_loader', 'AtomicCheckpointHook',
           'StrictLoadHook', 'EpochBasedTrainLoop', 'IterBasedTrainLoop', 'SharedTrunkHook',
           'load_trunk', 'close_distributed']
