"""Confusion matrix of a detector's test predictions (``tools/test.py --out x.pkl``) against
the dataset's ground truth, MMDetection's definition:

rows are the GT classes plus ``background``, columns the predicted classes plus
``background``. A detection (score >= ``score_thr``) is counted in
``[gt label, its label]`` for every GT box it overlaps with IoU >= ``tp_iou_thr``, and in
``[background, its label]`` when it overlaps none (a false positive on background). A GT
that no detection of its own class overlaps is counted in ``[its label, background]`` (a
miss). Crowd (ignored) regions are left out. ``nms_iou_thr`` re-runs class-wise NMS first.
"""
import numpy as np
import torch
from torchvision.ops import box_iou, nms

__all__ = ['calculate_confusion_matrix', 'plot_confusion_matrix', 'image_confusion']


def image_confusion(matrix, gt_boxes, gt_labels, det_boxes, det_scores, det_labels,
                    score_thr=0.0, tp_iou_thr=0.5, nms_iou_thr=None):
    """Add one image to ``matrix`` ((C + 1, C + 1), background last)."""
    bg = matrix.shape[0] - 1
    gt_boxes = torch.as_tensor(np.asarray(gt_boxes, np.float32).reshape(-1, 4))
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    det_boxes = torch.as_tensor(np.asarray(det_boxes, np.float32).reshape(-1, 4))
    det_scores = np.asarray(det_scores, np.float32).reshape(-1)
    det_labels = np.asarray(det_labels, np.int64).reshape(-1)
    found = np.zeros(len(gt_labels), bool)
    for label in np.unique(det_labels):
        sel = np.flatnonzero(det_labels == label)
        boxes, scores = det_boxes[sel], det_scores[sel]
        if nms_iou_thr:
            keep = nms(boxes, torch.as_tensor(scores), nms_iou_thr).numpy()
            boxes, scores = boxes[keep], scores[keep]
        keep = scores >= score_thr
        boxes = boxes[torch.as_tensor(keep)]
        if not len(boxes):
            continue
        ious = box_iou(boxes, gt_boxes).numpy() if len(gt_boxes) else \
            np.zeros((len(boxes), 0), np.float32)
        hits = ious >= tp_iou_thr                                    # (D, G)
        np.add.at(matrix, (bg, label), int((~hits.any(1)).sum()))   # background FPs
        for d, g in zip(*np.nonzero(hits)):
            matrix[gt_labels[g], label] += 1
        found |= hits.any(0) & (gt_labels == label)
    for g in np.flatnonzero(~found):
        matrix[gt_labels[g], bg] += 1
    return matrix


def _gt_of(data_info):
    boxes = [i['bbox'] for i in data_info.get('instances', []) if not i.get('ignore_flag', 0)]
    labels = [i['bbox_label'] for i in data_info.get('instances', [])
              if not i.get('ignore_flag', 0)]
    return boxes, labels


def calculate_confusion_matrix(dataset, results, score_thr=0.0, nms_iou_thr=None,
                               tp_iou_thr=0.5):
    """``(C + 1, C + 1)`` counts over the dataset (a ``CocoDataset``: raw GT of
    ``get_data_info``) and ``results`` (records with ``img_id`` and ``pred_instances``, see
    :func:`cascade_seg.engine.dump_results.load_predictions`), matched by ``img_id``."""
    num_classes = len(dataset.metainfo['classes'])
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    by_id = {rec['img_id']: rec for rec in results}
    missing = 0
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        rec = by_id.get(info['img_id'])
        gt_boxes, gt_labels = _gt_of(info)
        if rec is None:
            missing += 1
            pred = dict(bboxes=np.zeros((0, 4)), scores=np.zeros(0), labels=np.zeros(0))
        else:
            pred = rec['pred_instances']
        image_confusion(matrix, gt_boxes, gt_labels, pred['bboxes'], pred['scores'],
                        pred['labels'], score_thr, tp_iou_thr, nms_iou_thr)
    if missing == len(dataset) and len(dataset):
        raise ValueError('no prediction matches an image of the dataset by img_id: were they '
                         'made on this config\'s test set?')
    return matrix


def plot_confusion_matrix(matrix, labels, save_dir=None, show=False,
                          title='Normalized Confusion Matrix', color_theme='plasma'):
    """Row-normalised (percent of each GT class) heat map with the values written in; saved as
    ``<save_dir>/confusion_matrix.png``. Returns the figure."""
    import os
    import os.path as osp

    import matplotlib
    if not show:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sums = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
        percent = matrix.astype(np.float64) / sums * 100
    n = len(labels)
    size = max(4.0, 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=120)
    im = ax.imshow(np.nan_to_num(percent, nan=0.0), cmap=plt.get_cmap(color_theme), vmin=0,
                   vmax=100)
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontweight='bold')
    ax.set_ylabel('Ground Truth Label')
    ax.set_xlabel('Prediction Label')
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(labels, rotation=45, ha='left', rotation_mode='anchor')
    ax.set_yticklabels(labels)
    ax.tick_params(axis='x', bottom=False, top=True, labelbottom=False, labeltop=True)
    for i in range(n):
        for j in range(n):
            text = '-' if np.isnan(percent[i, j]) else f'{int(percent[i, j])}%'
            ax.text(j, i, text, ha='center', va='center', color='w', fontsize=7)
    fig.tight_layout()
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)
        fig.savefig(osp.join(save_dir, 'confusion_matrix.png'), format='png')
    if show:
        from cascade_seg.visualization.show import display_available
        ok, why = display_available()
        if ok:
            plt.show()
        else:
            from mmengine.logging import print_log
            print_log(f'--show: {why}; the matrix is saved in {save_dir}', logger='current',
                      level=30)
    plt.close(fig)
    return fig
