"""``TestTimeAug``: every combination of alternative transforms, for test-time augmentation."""
import copy
import itertools

from mmcv.transforms import BaseTransform

from ...registry import TRANSFORMS

__all__ = ['TestTimeAug']


@TRANSFORMS.register_module()
class TestTimeAug(BaseTransform):
    """Run each combination of alternatives on a copy of the input (MMCV's ``TestTimeAug``
    semantics, with this project's transforms).

    ``transforms`` is a list of steps, each a list of alternatives, e.g.::

        dict(type='TestTimeAug', transforms=[
            [dict(type='Resize', scale=(1333, 640)), dict(type='Resize', scale=(1333, 800))],
            [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)],
            [dict(type='PackDetInputs', meta_keys=(...))]])

    gives 4 augmented copies, in the order of ``itertools.product`` (the first alternative of
    every step first). The output is a dict of lists, ``{'inputs': [...], 'data_samples':
    [...]}``, one entry per copy; ``pseudo_collate`` turns a batch of them into one list per
    augmentation, which ``DetTTAModel`` (and mmengine's ``BaseTTAModel``) expects.
    """

    def __init__(self, transforms):
        if not transforms or not all(isinstance(step, (list, tuple)) and step
                                     for step in transforms):
            raise ValueError('TestTimeAug(transforms=...) needs a list of non-empty lists of '
                             'alternative transforms')
        self.steps = [[TRANSFORMS.build(t) if isinstance(t, dict) else t for t in step]
                      for step in transforms]

    def transform(self, results):
        outputs = []
        for combo in itertools.product(*self.steps):
            out = copy.deepcopy(results)
            for t in combo:
                out = t(out)
                if out is None:
                    break
            if out is not None:
                outputs.append(out)
        if not outputs:
            return None
        return {key: [o[key] for o in outputs] for key in outputs[0]}

    def __repr__(self):
        steps = ', '.join('[' + ', '.join(repr(t) for t in s) + ']' for s in self.steps)
        return f'{type(self).__name__}(transforms=[{steps}])'
