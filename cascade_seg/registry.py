"""Registries of cascade_seg, children of mmengine's roots.

Configs name components by ``type``; ``locations`` lets a registry import the
modules that define them on first use, so ``build`` works without the caller
importing anything first. An unknown ``type`` raises a KeyError that lists the
closest registered names.
"""
import difflib

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry


class _Registry(Registry):
    """A Registry whose missing-type error names the closest registered types."""

    def get(self, key):
        obj = super().get(key)
        if obj is None and isinstance(key, str) and '.' not in key:
            known = sorted(self._all_keys())
            close = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
            hint = f' Did you mean: {", ".join(close)}?' if close else ''
            raise KeyError(f'{key!r} is not registered in the {self.name!r} registry '
                           f'(or its parents).{hint}')
        return obj

    def _all_keys(self):
        self.import_from_location()
        keys, reg = set(), self
        while reg is not None:
            keys.update(reg.module_dict)
            reg = reg.parent
        return keys


def _child(name, parent, locations):
    return _Registry(name, parent=parent, scope='cascade_seg', locations=locations)


MODELS = _child('model', MMENGINE_MODELS, ['cascade_seg.models'])
DATASETS = _child('dataset', MMENGINE_DATASETS, ['cascade_seg.datasets'])
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS, ['cascade_seg.datasets'])
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, ['cascade_seg.datasets.transforms'])
METRICS = _child('metric', MMENGINE_METRICS, ['cascade_seg.evaluation'])
TASK_UTILS = _child('task util', MMENGINE_TASK_UTILS, ['cascade_seg.models.task_utils'])
HOOKS = _child('hook', MMENGINE_HOOKS, ['cascade_seg.engine'])
VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS, ['cascade_seg.visualization'])
# Task branches of the RoI head, registered under their task name ('mask', 'keypoint', ...):
# the RoI head builds the branch of every task whose `{task}_head` its config sets.
TASK_BRANCHES = _Registry('roi task branch', scope='cascade_seg',
                          locations=['cascade_seg.models.roi_heads.branches'])

# Children of mmengine's other roots, so that building the Runner's parts under the
# 'cascade_seg' scope finds mmengine's implementations without scope-fallback warnings.
RUNNERS = _child('runner', MMENGINE_RUNNERS, [])
RUNNER_CONSTRUCTORS = _child('runner constructor', MMENGINE_RUNNER_CONSTRUCTORS, [])
# our Epoch/IterBasedTrainLoop (exact resume) shadow mmengine's under this scope
LOOPS = _child('loop', MMENGINE_LOOPS, ['cascade_seg.engine'])
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS, [])
OPTIM_WRAPPERS = _child('optim_wrapper', MMENGINE_OPTIM_WRAPPERS, ['cascade_seg.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, [])
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS, [])
EVALUATOR = _child('evaluator', MMENGINE_EVALUATOR, [])
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS, [])
WEIGHT_INITIALIZERS = _child('weight initializer', MMENGINE_WEIGHT_INITIALIZERS, [])
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS, [])
LOG_PROCESSORS = _child('log_processor', MMENGINE_LOG_PROCESSORS, [])
FUNCTIONS = _child('function', MMENGINE_FUNCTIONS, [])
