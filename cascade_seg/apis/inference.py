"""High-level inference: build a detector from a config (+ checkpoint) and run it on images."""
import copy
import os.path as osp

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform, Compose
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

import cascade_seg.datasets.transforms  # noqa: F401  (registers the pipeline transforms)
from cascade_seg.datasets.transforms.loading import image_from_array
from cascade_seg.engine.checkpoint import load_checkpoint
from cascade_seg.engine.precision import normalize_precision, set_inference_precision
from cascade_seg.models.fused_conv import fuse_for_inference
from cascade_seg.registry import MODELS, TRANSFORMS

__all__ = ['LoadImageFromNDArray', 'init_detector', 'inference_detector', 'build_test_pipeline']


class LoadImageFromNDArray(BaseTransform):
    """Like ``LoadImageFromFile`` for an array in ``results['img']``.

    The array is converted as a decoded file is (gray, (H, W, 1), BGRA and
    uint16 become (H, W, 3) uint8 BGR, see ``image_from_array``); arrays that
    cannot be an image raise a ValueError. ``to_float32`` and ``color_type``
    mean what they mean for ``LoadImageFromFile``.
    """

    def __init__(self, to_float32=False, color_type='color'):
        if color_type not in ('color', 'grayscale'):
            raise ValueError(f"color_type must be 'color' or 'grayscale', got {color_type!r}")
        self.to_float32 = to_float32
        self.color_type = color_type

    def transform(self, results):
        what = f'image array (input {results["img_id"]})' if 'img_id' in results else 'image array'
        img = image_from_array(results['img'], what)
        if self.color_type == 'grayscale':
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        if self.to_float32:
            img = img.astype(np.float32)
        results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        results.setdefault('img_path', None)
        return results


if 'LoadImageFromNDArray' not in TRANSFORMS.module_dict:  # the data pipeline may define its own
    TRANSFORMS.register_module(name='LoadImageFromNDArray', module=LoadImageFromNDArray)


def _dataset_classes(cfg):
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset') or {}
        while 'dataset' in dataset:  # wrappers such as RepeatDataset
            dataset = dataset['dataset']
        classes = (dataset.get('metainfo') or {}).get('classes')
        if classes:
            return tuple(classes)
    return None


def _head_num_classes(model):
    for name, module in model.named_modules():
        n = getattr(module, 'num_classes', None)
        if isinstance(n, int) and 'bbox_head' in name:
            return n
    return None


def _strip_pretrained(node):
    """Drop ``init_cfg=dict(type='Pretrained', ...)`` so building never loads or downloads."""
    if isinstance(node, dict):
        init = node.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            node['init_cfg'] = None
        for value in node.values():
            _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)


def init_detector(config, checkpoint=None, device='cpu', cfg_options=None, strict=False,
                  precision=None, fuse=False):
    """Build a detector in eval mode on ``device``.

    Weights come from ``checkpoint`` (loaded with ``weights_only=True``; mismatched
    keys are reported with both shapes and raise when ``strict``). ``model.cfg``
    is the config and ``model.dataset_meta['classes']`` comes from the checkpoint
    meta, else the config's dataset, else ``class_0 ..``. ``precision`` (``'fp32'``,
    ``'bf16'``, ``'fp16'`` on CUDA; default: the config's ``precision`` key, else fp32) is the
    autocast ``inference_detector`` runs the model under (engine/precision.py);
    ``model.inference_precision`` says what runs. ``fuse=True`` folds the BatchNorms into the
    convolutions (models/fused_conv.py: the same predictions, faster on CPU; the model is then
    for inference only and its state dict has the folded layout, so it is off by default).
    """
    from cascade_seg.engine.runner_utils import load_config

    # the class count follows the config's dataset as in training (a count set by the user is
    # kept as set: a mismatching checkpoint is reported by the loading below)
    cfg = load_config(config, dict(cfg_options) if cfg_options else None,
                      strict_num_classes=False)
    init_default_scope(cfg.get('default_scope', 'cascade_seg'))
    if checkpoint is not None:
        _strip_pretrained(cfg.model)
    model = MODELS.build(cfg.model)
    meta = {}
    if checkpoint is not None:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict)
        if isinstance(ckpt, dict):
            meta = dict((ckpt.get('meta') or {}).get('dataset_meta') or {})
    else:
        model.init_weights()
    if not meta.get('classes'):
        classes = _dataset_classes(cfg)
        if classes is None:
            classes = tuple(f'class_{i}' for i in range(_head_num_classes(model) or 0))
        meta['classes'] = classes
    model.cfg = cfg
    model.dataset_meta = meta
    model = model.to(device).eval()
    if fuse:
        fuse_for_inference(model)
    requested = normalize_precision(precision) or normalize_precision(cfg.get('precision'))
    set_inference_precision(model, requested, device)
    return model


def build_test_pipeline(cfg, from_array=False):
    """The config's test pipeline without annotation loading; optionally reading arrays."""
    pipeline = None
    for key in ('test_dataloader', 'val_dataloader'):
        pipeline = ((cfg.get(key) or {}).get('dataset') or {}).get('pipeline')
        if pipeline:
            break
    pipeline = copy.deepcopy(pipeline or cfg.get('test_pipeline'))
    if not pipeline:
        raise ValueError('the config has no test pipeline (test_dataloader.dataset.pipeline)')
    steps = [dict(t) for t in pipeline if t['type'] != 'LoadAnnotations']
    if from_array:  # the file loader's options carry over (not its backend_args)
        steps = [dict(type='LoadImageFromNDArray',
                      **{k: t[k] for k in ('to_float32', 'color_type') if k in t})
                 if t['type'] == 'LoadImageFromFile' else t for t in steps]
    return Compose([TRANSFORMS.build(t) for t in steps])


@torch.no_grad()
def inference_detector(model, imgs, progress=False):
    """Run ``model`` on an image path, an image array, or a list of them.

    Arrays are converted as image files are (see ``LoadImageFromNDArray``): BGR
    or gray, uint8 or uint16, or 0..255 values in another dtype.

    Returns a DetDataSample with ``pred_instances`` (or a list for a list input);
    ``progress`` shows a progress bar over a list.
    """
    single = not isinstance(imgs, (list, tuple))
    imgs = [imgs] if single else list(imgs)
    init_default_scope(model.cfg.get('default_scope', 'cascade_seg'))
    pipelines = {}
    results = []
    bar = ProgressBar(len(imgs)) if progress and not single else None
    for i, img in enumerate(imgs):
        from_array = isinstance(img, np.ndarray)
        if from_array not in pipelines:
            pipelines[from_array] = build_test_pipeline(model.cfg, from_array)
        if from_array:
            data = dict(img=img, img_id=i)
        else:
            if not osp.isfile(img):
                raise FileNotFoundError(f'image not found: {img}')
            data = dict(img_path=img, img_id=i)
        data = pipelines[from_array](data)
        batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
        results.extend(model.test_step(batch))
        if bar is not None:
            bar.update()
    return results[0] if single else results
