"""Constructed COCO evaluation examples for the ablation statistics tests: a toy GT set with
detections of tunable quality, pycocotools evaluation, and physical image replication."""
import contextlib
import copy
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def coco_api(dataset):
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(gt, dets, iou_type='bbox', accumulate=True):
    coco_gt = coco_api(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets)) if dets else coco_api(
            dict(images=gt['images'], categories=gt['categories'], annotations=[]))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        if accumulate:
            ev.accumulate()
            ev.summarize()
    return ev


def _rle(size, box):
    m = np.zeros((size, size), np.uint8)
    x, y, w, h = (int(round(v)) for v in box)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return dict(size=[size, size], counts=rle['counts'].decode('ascii'))


def make_toy(num_images=5, num_cats=3, seed=0, quality=0.7, det_seed=None, crowd=True,
             with_masks=False, size=64):
    """A GT set (0-2 boxes per image and category, ~15% crowd when ``crowd``) and
    detections: each GT is found with probability ``quality + 0.2``, jittered less the
    higher ``quality``, plus 0-2 false positives per image and category; distinct random
    scores. The GT depends on ``seed`` only; the detections on ``det_seed`` (default
    ``seed``) and ``quality``."""
    rs = np.random.RandomState(seed)
    rd = np.random.RandomState(1000 + (seed if det_seed is None else det_seed))
    images = [dict(id=10 + 3 * i, width=size, height=size) for i in range(num_images)]
    cats = [dict(id=c + 1, name=f'c{c}') for c in range(num_cats)]
    anns, dets = [], []
    for img in images:
        for c in cats:
            for _ in range(rs.randint(0, 3)):
                w, h = rs.uniform(8, 24, size=2)
                x, y = rs.uniform(0, size - w), rs.uniform(0, size - h)
                box = [float(x), float(y), float(w), float(h)]
                ann = dict(id=len(anns) + 1, image_id=img['id'], category_id=c['id'], bbox=box,
                           area=float(w * h), iscrowd=int(crowd and rs.rand() < 0.15))
                anns.append(ann)
    for ann in anns:
        if rd.rand() < quality + 0.2:
            x, y, w, h = ann['bbox']
            jitter = rd.normal(0, (1.2 - quality) * 4, size=4)
            box = [max(0.0, x + jitter[0]), max(0.0, y + jitter[1]), max(2.0, w + jitter[2]),
                   max(2.0, h + jitter[3])]
            dets.append(dict(image_id=ann['image_id'], category_id=ann['category_id'],
                             bbox=[float(v) for v in box],
                             score=float(rd.uniform(0.3, 1.0) * quality + 0.1)))
    for img in images:
        for c in cats:
            for _ in range(rd.randint(0, 3)):  # false positives
                w, h = rd.uniform(6, 20, size=2)
                box = [rd.uniform(0, size - w), rd.uniform(0, size - h), w, h]
                dets.append(dict(image_id=img['id'], category_id=c['id'],
                                 bbox=[float(v) for v in box],
                                 score=float(rd.uniform(0.05, 0.8))))
    for d in dets:  # distinct scores: ties would make the replicated order ambiguous
        d['score'] += 1e-9 * rd.rand()
    if with_masks:
        for a in anns + dets:
            a['segmentation'] = _rle(size, a['bbox'])
    gt = dict(images=images, categories=cats, annotations=anns)
    return gt, dets


def replicate_dataset(gt, dets, counts):
    """The toy set with image i present counts[i] times (copies get new, adjacent ids)."""
    images, anns, new_dets = [], [], []
    for img, k in zip(gt['images'], counts):
        for copy_idx in range(k):
            new_id = img['id'] * 100 + copy_idx
            images.append(dict(img, id=new_id))
            anns += [dict(a, id=len(anns) + 1 + j, image_id=new_id) for j, a in
                     enumerate(a for a in gt['annotations'] if a['image_id'] == img['id'])]
            new_dets += [dict(d, image_id=new_id) for d in dets if d['image_id'] == img['id']]
    # re-number annotation ids uniquely
    for j, a in enumerate(anns):
        a['id'] = j + 1
    return dict(images=images, categories=gt['categories'], annotations=anns), new_dets
