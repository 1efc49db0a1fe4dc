"""Runner hooks: stop on non-finite losses, check num_classes, save drawn predictions, fold
BatchNorms for a test run."""
import math
import os
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from cascade_seg.models.fused_conv import fuse_for_inference
from cascade_seg.registry import HOOKS

from .num_classes import num_classes_mismatches

__all__ = ['non_finite_losses', 'CheckFiniteLossHook', 'num_classes_mismatches',
           'NumClassesCheckHook', 'SavePredictionImagesHook', 'FuseForInferenceHook']


def non_finite_losses(log_vars):
    """Names of the entries of a loss dict that are NaN or Inf."""
    bad = []
    for name, value in (log_vars or {}).items():
        if hasattr(value, 'detach'):
            finite = bool(value.detach().isfinite().all())
        else:
            try:
                finite = math.isfinite(float(value))
            except (TypeError, ValueError):
                continue  # not a number (e.g. a string in custom log_vars)
        if not finite:
            bad.append(name)
    return bad


def _as_float(value):
    if hasattr(value, 'detach'):
        value = value.detach().float()
        bad = value[~value.isfinite()]
        return float(bad.flatten()[0]) if bad.numel() else float(value.flatten()[0])
    return float(value)


@HOOKS.register_module()
class CheckFiniteLossHook(Hook):
    """Raise as soon as a training loss is NaN or Inf.

    It runs before the logger and checkpoint hooks of the same iteration, so the
    last saved checkpoint is still a finite model.
    """
    priority = 'VERY_HIGH'

    def __init__(self, interval=1):
        self.interval = interval

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.every_n_train_iters(runner, self.interval):
            return
        bad = non_finite_losses(outputs)
        if bad:
            values = ', '.join(f'{k}={_as_float(outputs[k]):g}' for k in bad)
            raise RuntimeError(
                f'Non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): '
                f'{values}. Training stopped; lower the learning rate, enable gradient '
                'clipping (optim_wrapper.clip_grad) or check the annotations.')


def _unwrap(model):
    """The detector inside a DDP wrapper or a test-time-augmentation model."""
    from mmengine.model import BaseTTAModel
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


@HOOKS.register_module()
class NumClassesCheckHook(Hook):
    """Check that the RoI heads predict as many classes as the dataset has."""
    priority = 'VERY_HIGH'

    def _check(self, runner, dataloader, mode):
        dataset = getattr(dataloader, 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        if classes is None:
            return
        if isinstance(classes, str):
            classes = (classes, )
        bad = num_classes_mismatches(runner.model, len(classes))
        if bad:
            heads = ', '.join(f'{name} has num_classes={n}' for name, n in bad)
            raise ValueError(
                f'The {mode} dataset has {len(classes)} classes {tuple(classes)} but {heads}. '
                f'Set model.roi_head.num_classes={len(classes)} (every box and mask head).')

    def before_train(self, runner):
        self._check(runner, runner.train_dataloader, 'train')

    def before_val(self, runner):
        self._check(runner, runner.val_dataloader, 'val')

    def before_test(self, runner):
        self._check(runner, runner.test_dataloader, 'test')


@HOOKS.register_module()
class SavePredictionImagesHook(Hook):
    """Draw the test predictions on the input images; write them below ``out_dir`` and/or
    show them in a window (``show``, ``wait_time`` seconds each; only where there is a
    display, see cascade_seg/visualization/show.py).

    A relative ``out_dir`` is taken below ``<work_dir>/<timestamp>/`` as MMDetection's
    ``--show-dir`` is; an absolute one is used as it is.
    """
    priority = 'LOW'

    def __init__(self, out_dir=None, score_thr=0.3, interval=1, show=False, wait_time=0.):
        self.out_dir = out_dir
        self.score_thr = score_thr
        self.interval = interval
        self.show = show
        self.wait_time = wait_time
        self._count = 0
        self._resolved = None

    def _out_dir(self, runner):
        if self._resolved is None and self.out_dir:
            out = self.out_dir
            if not osp.isabs(out) and getattr(runner, 'work_dir', None):
                out = osp.join(runner.work_dir, getattr(runner, 'timestamp', ''), out)
            self._resolved = out
        return self._resolved

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        import cv2

        from cascade_seg.visualization import draw_det_data_sample
        from cascade_seg.visualization.show import show_image
        meta = getattr(_unwrap(runner.model), 'dataset_meta', None) or \
            getattr(runner.test_dataloader.dataset, 'metainfo', {}) or {}
        out_dir = self._out_dir(runner)
        for sample in outputs or []:
            self._count += 1
            path = sample.metainfo.get('img_path')
            if (self._count - 1) % self.interval or not path or not osp.isfile(path):
                continue
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            drawn = draw_det_data_sample(img, sample, meta.get('classes'), self.score_thr)
            if self.show:
                show_image(drawn, osp.basename(path), self.wait_time)
            if out_dir:
                out = osp.join(out_dir, self._relative(runner, path))
                os.makedirs(osp.dirname(out), exist_ok=True)
                cv2.imwrite(out, drawn)

    def after_test(self, runner):
        if self._resolved:
            from mmengine.logging import print_log
            print_log(f'drawn predictions written to {self._resolved}', logger='current')

    @staticmethod
    def _relative(runner, path):
        """``path`` below the test set's image folder (``a/x.jpg`` and ``b/x.jpg`` stay
        apart), or its base name when it lies elsewhere."""
        dataset = getattr(runner.test_dataloader, 'dataset', None)
        prefix = (getattr(dataset, 'data_prefix', None) or {}).get('img')
        if prefix:
            rel = osp.relpath(osp.abspath(path), osp.abspath(prefix))
            if not rel.startswith('..') and not osp.isabs(rel):
                return rel
        return osp.basename(path)


@HOOKS.register_module()
class FuseForInferenceHook(Hook):
    """Before a test run (after the checkpoint is loaded), fold the model's BatchNorms into its
    convolutions (models/fused_conv.py): tools/test.py adds it unless ``--no-fuse``. Not for
    validation during training: the folded model cannot train on."""

    priority = 'LOW'

    def before_test(self, runner):
        runner.model.eval()
        folded = fuse_for_inference(runner.model)
        runner.logger.info(f'fuse_for_inference: {folded} BatchNorms folded into their '
                           'convolutions')
