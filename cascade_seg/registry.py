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
