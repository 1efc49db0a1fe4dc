"""Best and worst images of a test run by their own COCO AP (``tools/analyze_results.py``).

An image's AP is COCO's AP computed on that image alone: one ``COCOeval.evaluate()`` over
the whole set gives the per-image matching, and the ablation statistics' weighted accumulate
(:func:`cascade_seg.ablation.stats.replicate_metrics` with one-hot image weights) turns it
into each image's AP exactly as pycocotools would on a one-image set (AP@[.5:.95], averaged
over the categories present in that image). Images without ground truth have no AP and are
not ranked.
"""
import os
import os.path as osp

import numpy as np

__all__ = ['image_aps', 'rank_images', 'save_ranked_images']


def _coco_metric(cfg, iou_type):
    from mmengine.registry import init_default_scope

    import cascade_seg.evaluation  # noqa: F401
    from cascade_seg.registry import METRICS
    init_default_scope(cfg.get('default_scope', 'cascade_seg'))
    evaluators = cfg.get('test_evaluator')
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    coco = next((e for e in evaluators if e and e.get('type') == 'CocoMetric'), None)
    if coco is None:
        raise ValueError('the config\'s test_evaluator has no CocoMetric to rank images with')
    return METRICS.build(dict(coco, metric=[iou_type], classwise=False, outfile_prefix=None,
                              format_only=False))


def image_aps(cfg, dataset, results, iou_type='bbox'):
    """``{img_id: AP}`` (AP@[.5:.95] of each image alone; NaN without ground truth) of the
    records ``results`` (``pred_instances`` with ``masks`` as RLE for ``'segm'``)."""
    from mmengine.logging import MMLogger

    from cascade_seg.ablation.stats import extract_eval, replicate_metrics
    metric = _coco_metric(cfg, iou_type)
    metric.dataset_meta = dataset.metainfo
    for rec in results:
        if iou_type == 'segm' and 'masks' not in rec['pred_instances']:
            raise ValueError('--metric segm needs masks in the predictions')
        metric.process({}, [dict(rec, pred_instances=dict(rec['pred_instances']))])
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # COCOeval's summary per metric is not wanted here
    try:
        metric.compute_metrics(metric.results)
    finally:
        logger.setLevel(level)
    data = extract_eval(metric.coco_evals[iou_type])
    n = len(data['img_ids'])
    per_image = replicate_metrics(data, np.eye(n, dtype=np.int64))['mAP'] if n else []
    return {int(i): float(ap) for i, ap in zip(data['img_ids'], per_image)}


def rank_images(aps, topk=20):
    """``(best, worst)``: ``[(img_id, AP)]`` of the ``topk`` images with the highest AP (best
    first) and the lowest (worst first); with fewer than ``2 * topk`` ranked images each list
    gets half of them."""
    ranked = sorted(((i, ap) for i, ap in aps.items() if not np.isnan(ap)),
                    key=lambda kv: (kv[1], kv[0]))
    topk = max(1, min(topk, len(ranked) // 2)) if ranked else 0
    return ranked[::-1][:topk], ranked[:topk]


def save_ranked_images(dataset, results, ranked, out_dir, score_thr=0.0, show=False,
                       wait_time=0.):
    """For each ``(img_id, AP)``: the image with its ground truth (left) and the predictions
    scoring at least ``score_thr`` (right), as ``<out_dir>/<stem>_<AP>.<ext>``. Returns the
    files written."""
    import cv2

    from cascade_seg.visualization import draw_instances
    from cascade_seg.visualization.show import show_image
    os.makedirs(out_dir, exist_ok=True)
    index = {dataset.get_data_info(k)['img_id']: k for k in range(len(dataset))}
    by_id = {rec['img_id']: rec for rec in results}
    classes = dataset.metainfo.get('classes')
    written = []
    for img_id, ap in ranked:
        item = dataset[index[img_id]]
        sample = item['data_samples']
        path = sample.metainfo['img_path']
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        gt = sample.get('gt_instances', None)
        left = draw_instances(img, gt, classes) if gt is not None else img.copy()
        pred = dict(by_id[img_id]['pred_instances'])
        if isinstance(pred.get('masks'), list):
            pred['masks'] = _decode(pred['masks'], img.shape[:2])
        right = draw_instances(img, pred, classes, score_thr)
        drawn = cv2.hconcat([left, right])
        stem, ext = osp.splitext(osp.basename(path))
        out = osp.join(out_dir, f'{stem}_{round(ap, 3)}{ext or ".png"}')
        cv2.imwrite(out, drawn)
        written.append(out)
        if show:
            show_image(drawn, osp.basename(out), wait_time)
    return written


def _decode(rles, shape):
    from pycocotools import mask as mask_utils
    if not rles:
        return np.zeros((0, *shape), bool)
    return mask_utils.decode(list(rles)).transpose(2, 0, 1).astype(bool)
