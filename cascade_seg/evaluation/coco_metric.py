"""COCO-style box / mask / keypoint AP with pycocotools, as an mmengine metric."""
import contextlib
import io
import json
import logging
import os
import os.path as osp

import cv2
import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmengine.structures import BaseDataElement
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cascade_seg.datasets.coco import clean_coco, read_coco_json, skip_summary
from cascade_seg.registry import METRICS

# Index of each reported number in COCOeval.stats.
_STAT_INDEX = {
    'bbox': dict(mAP=0, mAP_50=1, mAP_75=2, mAP_s=3, mAP_m=4, mAP_l=5),
    'segm': dict(mAP=0, mAP_50=1, mAP_75=2, mAP_s=3, mAP_m=4, mAP_l=5),
    'keypoints': dict(mAP=0, mAP_50=1, mAP_75=2, mAP_m=3, mAP_l=4),
}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def encode_masks(masks):
    """(N, H, W) bool/uint8 masks -> list of compressed RLE dicts with str counts."""
    masks = _np(masks).astype(np.uint8)
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [dict(size=[int(s) for s in r['size']], counts=r['counts'].decode('ascii'))
            for r in rles]


def xyxy_to_xywh(boxes):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def results_to_coco(preds, cat_ids):
    """Per-image prediction dicts -> COCO result lists ``{'bbox': [...], 'segm': [...], ...}``.

    ``preds`` items hold ``img_id, bboxes (N,4) xyxy, scores, labels`` and optionally
    ``masks`` (RLE list), ``mask_scores``, ``keypoints (N,K,2|3)``, ``keypoint_scores``.
    Labels are contiguous and mapped to COCO category ids through ``cat_ids``.
    """
    out = dict(bbox=[], segm=[], keypoints=[])
    for p in preds:
        boxes = xyxy_to_xywh(p['bboxes'])
        for i, (label, score) in enumerate(zip(p['labels'], p['scores'])):
            base = dict(image_id=int(p['img_id']), category_id=int(cat_ids[int(label)]))
            out['bbox'].append(dict(base, bbox=[float(v) for v in boxes[i]], score=float(score)))
            if 'masks' in p:
                s = p['mask_scores'][i] if 'mask_scores' in p else score
                out['segm'].append(dict(base, segmentation=p['masks'][i], score=float(s)))
            if 'keypoints' in p:
                kpts = np.asarray(p['keypoints'][i], np.float64)
                vis = (np.asarray(p['keypoint_scores'][i], np.float64)[:, None]
                       if 'keypoint_scores' in p else np.ones((len(kpts), 1)))
                flat = np.concatenate([kpts[:, :2], vis], axis=1).ravel()
                out['keypoints'].append(dict(base, keypoints=[float(v) for v in flat],
                                             score=float(score)))
    return out


def _quiet(fn, *args):
    """Call ``fn`` capturing pycocotools' prints; returns (result, printed text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fn(*args)
    return res, buf.getvalue()


def _coco_from_dict(dataset):
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def load_results(coco_gt, anns):
    """``coco_gt.loadRes`` that also accepts an empty result list (AP 0, not a crash)."""
    if anns:  # loadRes adds fields in place: give it copies
        return _quiet(coco_gt.loadRes, [dict(a) for a in anns])[0]
    return _coco_from_dict(dict(images=coco_gt.dataset.get('images', []),
                                categories=coco_gt.dataset.get('categories', []),
                                annotations=[]))


def mean_precision(precision):
    """Mean of COCOeval precision entries, ignoring -1 (no GT); -1.0 if nothing is left."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO AP for boxes, masks and keypoints (MMDetection-compatible arguments).

    GT comes from ``ann_file``; without it, from each sample's ``gt_instances``
    (taken to be in the original image frame). Predicted labels are contiguous and
    map to the category ids of ``dataset_meta['classes']``, looked up by name in
    ``ann_file``. Reported keys: ``{metric}_mAP, _mAP_50, _mAP_75, _mAP_s, _mAP_m,
    _mAP_l`` (keypoints have no ``_s``), and ``{metric}_precision_per_iou``: AP at
    each IoU threshold. Following COCO, a number with no GT behind it (e.g. no
    large objects) is reported as -1.0.

    ``ann_file`` is validated like the dataset validates it (``clean_coco``), with
    ``on_bad_annotation`` if given, else the policy of the dataset evaluated
    (``dataset_meta['on_bad_annotation']``, set by ``CocoDataset``), else
    ``'error'``: the metric scores the ground truth the dataset kept and logs how
    much it skipped. Under ``'error'`` a bad annotation raises when the dataset
    meta is set, before any evaluation runs.
    """
    default_prefix = 'coco'

    def __init__(self, ann_file=None, metric='bbox', classwise=False, outfile_prefix=None,
                 format_only=False, collect_device='cpu', prefix=None, iou_thrs=None,
                 proposal_nums=(100, 300, 1000), collect_dir=None, backend_args=None,
                 kpt_oks_sigmas=None, on_bad_annotation=None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        for m in self.metrics:
            if m not in _STAT_INDEX:
                raise KeyError(f'metric {m!r} is not supported; use bbox, segm or keypoints')
        if format_only and outfile_prefix is None:
            raise ValueError('format_only=True needs outfile_prefix to write the results to')
        self.classwise = classwise
        self.outfile_prefix = outfile_prefix
        self.format_only = format_only
        self.iou_thrs = None if iou_thrs is None else np.asarray(iou_thrs, np.float64)
        self.proposal_nums = tuple(proposal_nums)  # kept for config compatibility
        self.kpt_oks_sigmas = None if kpt_oks_sigmas is None else \
            np.asarray(kpt_oks_sigmas, np.float64)
        self.ann_file = ann_file
        self.on_bad_annotation = on_bad_annotation
        self._coco_api = None
        # The last evaluation's COCOeval per metric (its per-image matching feeds the
        # ablation bootstrap, cascade_seg/ablation/stats.py); replaced at every evaluation.
        self.coco_evals = {}
        # image-info files (format_only on a test set) have no 'annotations'
        self._raw_gt = None if ann_file is None else read_coco_json(
            ann_file, backend_args, image_keys=('id', 'height', 'width'),
            top_keys=('images', 'categories'))

    @property
    def dataset_meta(self):
        return self._dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, dataset_meta):
        self._dataset_meta = dataset_meta
        self._coco_api = None
        if self._raw_gt is not None:
            self._ground_truth()  # a bad annotation under 'error' raises now, not after a run

    def _ground_truth(self):
        """The ann_file's COCO API, cleaned with the dataset's policy (built once)."""
        if self._coco_api is None:
            policy = self.on_bad_annotation or (self.dataset_meta or {}).get(
                'on_bad_annotation') or 'error'
            kept, dropped = clean_coco(self._raw_gt, self.ann_file, policy, quiet=True)
            if dropped['annotations'] or dropped['images']:
                print_log('CocoMetric evaluates the ground truth the dataset kept: '
                          + skip_summary(self.ann_file, dropped), logger='current',
                          level=logging.WARNING)
            self._coco_api = _coco_from_dict(kept)
        return self._coco_api

    # ------------------------------------------------------------ per batch
    def process(self, data_batch, data_samples):
        """Keep small, picklable per-image results; masks become RLE right away."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            pred = sample['pred_instances']
            if isinstance(pred, BaseDataElement):
                pred = pred.to_dict()
            res = dict(img_id=int(sample['img_id']),
                       bboxes=_np(pred['bboxes']).astype(np.float32).reshape(-1, 4),
                       scores=_np(pred['scores']).astype(np.float32),
                       labels=_np(pred['labels']).astype(np.int64))
            if 'masks' in pred:
                m = pred['masks']
                res['masks'] = m if isinstance(m, list) else encode_masks(m)
            for key in ('mask_scores', 'keypoints', 'keypoint_scores'):
                if key in pred:
                    res[key] = _np(pred[key]).astype(np.float32)
            gt = dict(img_id=res['img_id'], height=int(sample['ori_shape'][0]),
                      width=int(sample['ori_shape'][1]))
            if self.ann_file is None:
                gt['anns'] = self._gt_from_sample(sample, gt['height'], gt['width'])
            self.results.append((gt, res))

    @staticmethod
    def _gt_from_sample(sample, h, w):
        """GT annotations (COCO dicts without ids) from ``gt_instances`` / ``ignored_instances``."""
        anns = []
        for key, crowd in (('gt_instances', 0), ('ignored_instances', 1)):
            inst = sample.get(key)
            if inst is None:
                continue
            if isinstance(inst, BaseDataElement):
                inst = inst.to_dict()
            if 'bboxes' not in inst:
                continue
            boxes = xyxy_to_xywh(_np(inst['bboxes']))
            labels = _np(inst['labels']).reshape(-1)
            masks = encode_masks(np.stack([
                cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) if m.shape != (h, w) else m
                for m in _np(inst['masks']).astype(np.uint8)])) \
                if 'masks' in inst and len(labels) else None
            for i, label in enumerate(labels):
                ann = dict(category_id=int(label), bbox=[float(v) for v in boxes[i]],
                           area=float(boxes[i, 2] * boxes[i, 3]), iscrowd=crowd)
                if masks is not None:
                    ann['segmentation'] = masks[i]
                    ann['area'] = float(mask_utils.area(masks[i]))
                anns.append(ann)
        return anns

    # ------------------------------------------------------------ whole set
    def _gt_api_and_cat_ids(self, gts):
        classes = (self.dataset_meta or {}).get('classes')
        if self.ann_file is not None:
            coco = self._ground_truth()
            if classes is None:
                return coco, coco.getCatIds()
            name_to_id = {c['name']: c['id'] for c in coco.dataset['categories']}
            return coco, [name_to_id[name] for name in classes]
        # No ann_file: categories are the contiguous labels themselves.
        if classes is None:
            num = 1 + max([a['category_id'] for g in gts for a in g['anns']], default=0)
            classes = [str(i) for i in range(num)]
        images, anns = [], []
        for g in gts:
            images.append(dict(id=g['img_id'], height=g['height'], width=g['width']))
            for a in g['anns']:
                anns.append(dict(a, id=len(anns) + 1, image_id=g['img_id']))
        dataset = dict(images=images, annotations=anns,
                       categories=[dict(id=i, name=n) for i, n in enumerate(classes)])
        if self.outfile_prefix is not None:
            self._dump(dataset, f'{self.outfile_prefix}.gt.json')
        return _coco_from_dict(dataset), list(range(len(classes)))

    @staticmethod
    def _dump(obj, path):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(obj, f)

    def compute_metrics(self, results):
        logger = MMLogger.get_current_instance()
        gts, preds = zip(*results) if results else ((), ())
        coco_gt, cat_ids = self._gt_api_and_cat_ids(gts)
        coco_results = results_to_coco(preds, cat_ids)

        if self.outfile_prefix is not None:
            for m in self.metrics:
                self._dump(coco_results[m], f'{self.outfile_prefix}.{m}.json')
            logger.info(f'COCO results written to {self.outfile_prefix}.*.json')
        if self.format_only:
            return {}

        # Score the images that were actually evaluated (all of them in a full run).
        img_ids = sorted({g['img_id'] for g in gts} & set(coco_gt.getImgIds()))
        metrics = {}
        self.coco_evals = {}
        for m in self.metrics:
            coco_dt = load_results(coco_gt, coco_results[m])
            coco_eval = COCOeval(coco_gt, coco_dt, m)
            coco_eval.params.catIds = cat_ids
            coco_eval.params.imgIds = img_ids
            if m == 'keypoints':
                coco_eval.params.kpt_oks_sigmas = self._oks_sigmas(coco_gt, cat_ids)
            if self.iou_thrs is not None:
                coco_eval.params.iouThrs = self.iou_thrs
            _, text = _quiet(lambda: (coco_eval.evaluate(), coco_eval.accumulate(),
                                      coco_eval.summarize()))
            logger.info(f'{m} evaluation:\n{text}')
            self.coco_evals[m] = coco_eval

            for name, idx in _STAT_INDEX[m].items():
                metrics[f'{m}_{name}'] = float(coco_eval.stats[idx])
            precision = coco_eval.eval['precision']  # (iou, recall, class, area, max dets)
            metrics[f'{m}_precision_per_iou'] = [
                mean_precision(precision[t, :, :, 0, -1]) for t in range(precision.shape[0])]
            if self.classwise:
                for k, cid in enumerate(cat_ids):
                    name = coco_gt.loadCats(cid)[0]['name']
                    metrics[f'{m}_{name}_precision'] = mean_precision(precision[:, :, k, 0, -1])
            logger.info(f'{m}_mAP_copypaste: ' + ' '.join(
                f'{metrics[f"{m}_{n}"]:.3f}' for n in _STAT_INDEX[m]))
        return metrics

    def _oks_sigmas(self, coco_gt, cat_ids):
        """OKS sigmas, first found: this metric's ``kpt_oks_sigmas`` argument, the dataset
        metainfo's ``kpt_oks_sigmas``, COCO's person sigmas when there are 17 keypoints. Other
        keypoint sets must name theirs (an error says so): a guessed sigma would set the
        metric's scale silently."""
        cat = coco_gt.loadCats(cat_ids[0])[0] if cat_ids else {}
        num = len(cat.get('keypoints', [])) or 17
        meta = self.dataset_meta or {}
        for source, sigmas in (('val_evaluator.kpt_oks_sigmas', self.kpt_oks_sigmas),
                               ("dataset metainfo['kpt_oks_sigmas']", meta.get('kpt_oks_sigmas'))):
            if sigmas is not None:
                sigmas = np.asarray(sigmas, np.float64).reshape(-1)
                if len(sigmas) == 1:
                    sigmas = np.full(num, sigmas[0])
                if len(sigmas) != num:
                    raise ValueError(f'{source} has {len(sigmas)} sigmas for {num} keypoints')
                return sigmas
        if num == 17:
            return COCOeval(iouType='keypoints').params.kpt_oks_sigmas
        raise ValueError(f'{num} keypoints: set val_evaluator.kpt_oks_sigmas (one OKS sigma per '
                         "keypoint, or one for all); COCO's 17 person sigmas do not apply")
