"""What a task branch of the RoI head is: its heads (one per stage it uses, keyed by stage id,
so parameters are named ``{task}_head.{t}.*`` as MMDetection names its cascade heads), which
stages it trains at, its targets and loss, and its post-processing.

A branch never sees the RoI head. The RoI head gives it, per stage, the RoI features of the
positive samples (training) or a ``pool(stage)`` function that returns the RoI features of the
detections for that stage's extractor (inference).
"""
from torch import nn

from cascade_seg.registry import MODELS

STAGE_MODES = ('all', 'first', 'last', 'shared')


def resolve_stages(stages, num_stages):
    """``'all' | 'first' | 'last' | 'shared' | [ids]`` -> sorted stage ids with a loss."""
    if stages in ('all', 'shared'):
        return list(range(num_stages))
    if stages == 'first':
        return [0]
    if stages == 'last':
        return [num_stages - 1]
    if isinstance(stages, str):
        raise ValueError(f'stages must be one of {STAGE_MODES} or a list of stage ids, '
                         f'got {stages!r}')
    ids = sorted({int(t) for t in stages})
    if not ids or ids[0] < 0 or ids[-1] >= num_stages:
        raise ValueError(f'stages {stages!r} must be ids in [0, {num_stages})')
    return ids


class TaskBranch(nn.ModuleDict):
    """Base of the task branches. Subclasses set ``task`` (the config prefix: the RoI head
    reads ``{task}_head``, ``{task}_roi_extractor`` and ``{task}_stages`` and passes every other
    ``{task}_<name>`` key as ``<name>``) and implement ``loss``, ``predict`` and
    ``postprocess``; register them in ``TASK_BRANCHES`` under ``task``.

    Args:
        head_cfgs: the head config of every stage (stage overrides already merged).
        stages: the stages that train (and, by default, test) this task, see
            :func:`resolve_stages`; ``'shared'``: one head (stage 0's) trained at every stage.
        train_cfgs: the RoI head's training config of every stage (None at test time).
        test_cfg: the RoI head's test config.
    """
    task = ''
    order = 0                  # branches run in this order; later ones may read earlier outputs
    predicts_classes = True    # the heads' num_classes is the dataset's (roi_head.num_classes)
    default_stages = 'all'

    def __init__(self, head_cfgs, stages=None, train_cfgs=None, test_cfg=None):
        super().__init__()
        num_stages = len(head_cfgs)
        stages = self.default_stages if stages is None else stages
        self.shared = stages == 'shared'
        self.stages = resolve_stages(stages, num_stages)
        self.train_cfgs = train_cfgs
        self.test_cfg = test_cfg or {}
        for t in self.head_stages:
            cfg = head_cfgs[t]
            if not cfg:
                raise ValueError(f'stage {t} uses the {self.task} branch but has no '
                                 f'{self.task}_head config')
            self[str(t)] = MODELS.build(self.head_cfg(t, cfg))

    def head_cfg(self, stage, cfg):
        """Hook: the config a stage's head is built from."""
        return cfg

    @property
    def head_stages(self):
        """Stages with a head of their own."""
        return self.stages[:1] if self.shared else self.stages

    @property
    def test_stages(self):
        """Stages whose heads run at test time (default: the last one)."""
        return self.head_stages[-1:]

    def head(self, stage):
        return self[str(self.head_stages[0] if self.shared else stage)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A one-head branch also loads un-indexed names (MMDetection's Mask R-CNN, torchvision).
        if len(self.head_stages) == 1:
            key0 = str(self.head_stages[0])
            for key in [k for k in state_dict if k.startswith(prefix)
                        and not k[len(prefix):].split('.', 1)[0].isdigit()]:
                state_dict[f'{prefix}{key0}.{key[len(prefix):]}'] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- the RoI head's calls
    def loss(self, stage, roi_feats, samples, gts, shared):
        """Unweighted losses of ``stage`` on the positive samples.

        Args:
            roi_feats: RoI features of the positives, image by image (``s.pos_priors``).
            samples: the stage's sampling results, one per image.
            gts: ground truth ``InstanceData`` per image.
            shared: a dict this stage's branches share (later branches read earlier outputs).
        """
        raise NotImplementedError

    def predict(self, pool, rois, labels, shared):
        """Raw per-RoI outputs for the detections ``rois (K, 5)`` with ``labels (K,)``.

        ``pool(stage)`` returns their RoI features for that stage's extractor.
        """
        raise NotImplementedError

    def postprocess(self, results, raw, metas, rescale):
        """Set this task's fields on each image's ``results`` from its slice of ``raw``; the
        boxes are already in the output frame (``ori_shape`` if ``rescale`` else
        ``img_shape``)."""
        raise NotImplementedError

    def empty_result(self, result, shape):
        """Set this task's fields on an image without detections."""
        raise NotImplementedError

    def deaugment(self, raw, metas, num_per_img):
        """``raw`` (from ``predict`` on an augmented copy's boxes) brought back to the original
        image, so that test-time augmentation can average the copies. ``metas``: the copy's
        per-image metainfo (``flip``, ``flip_direction``, ``scale_factor``, ...)."""
        raise NotImplementedError(f'test-time augmentation does not know how to bring the '
                                  f"{self.task!r} branch's outputs back from an augmented copy "
                                  f'({type(self).__name__}.deaugment)')
