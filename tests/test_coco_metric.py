import json
import pickle

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from pycocotools.coco import COCO

from cascade_seg.datasets import synthetic as syn
from cascade_seg.evaluation import CocoMetric
from cascade_seg.registry import METRICS
from cascade_seg.structures import DetDataSample

META = dict(classes=syn.THING_CLASSES)


@pytest.fixture(scope='module')
def gt_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('synth'))
    res = syn.make_synthetic_coco(out, num_train=0, num_val=8, image_size=(64, 64), seed=1,
                                  difficulty='hard', p_empty=0.2)
    return res['val_ann']


def perfect_samples(ann_file, as_dict=True):
    """Ground truth turned into predictions with score 1 (contiguous labels)."""
    coco = COCO(ann_file)
    label_of = {cid: i for i, cid in enumerate(syn.THING_CAT_IDS)}
    samples = []
    for im in coco.dataset['images']:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=im['id']))
        boxes = np.array([a['bbox'] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        pred = InstanceData(
            bboxes=torch.from_numpy(boxes), scores=torch.ones(len(anns)),
            labels=torch.tensor([label_of[a['category_id']] for a in anns], dtype=torch.long),
            masks=torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(bool)
                                   if anns else np.zeros((0, im['height'], im['width']), bool)))
        s = DetDataSample(metainfo=dict(img_id=im['id'], ori_shape=(im['height'], im['width'])))
        s.pred_instances = pred
        samples.append(s.to_dict() if as_dict else s)
    return samples


def evaluate(samples, **kwargs):
    metric = CocoMetric(**kwargs)
    metric.dataset_meta = META
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_perfect_predictions_score_one(gt_file):
    res = evaluate(perfect_samples(gt_file), ann_file=gt_file, metric=['bbox', 'segm'],
                   classwise=True)
    for m in ('bbox', 'segm'):
        assert res[f'{m}_mAP'] == pytest.approx(1.0)
        assert res[f'{m}_mAP_50'] == pytest.approx(1.0)
        assert res[f'{m}_mAP_75'] == pytest.approx(1.0)
        assert res[f'{m}_mAP_l'] == -1.0  # no large objects in 64x64 images: COCO's -1
        assert res[f'{m}_precision_per_iou'] == pytest.approx([1.0] * 10)
        assert res[f'{m}_ring_precision'] == pytest.approx(1.0)


def test_wrong_labels_and_shifted_boxes_lower_ap(gt_file):
    shuffled = perfect_samples(gt_file)
    for s in shuffled:
        s['pred_instances']['labels'] = (s['pred_instances']['labels'] + 1) % len(syn.THING_CLASSES)
    res = evaluate(shuffled, ann_file=gt_file, metric=['bbox', 'segm'])
    assert res['bbox_mAP'] < 0.2 and res['segm_mAP'] < 0.2

    shifted = perfect_samples(gt_file)
    for s in shifted:
        b = s['pred_instances']['bboxes']
        b[:, [0, 2]] += 0.25 * (b[:, 2:3] - b[:, 0:1])  # a quarter of the width to the right
    res = evaluate(shifted, ann_file=gt_file, metric=['bbox', 'segm'])
    assert res['bbox_mAP'] < 0.6 and res['bbox_mAP_50'] > 0.5  # IoU 0.6: only loose thresholds
    p = res['bbox_precision_per_iou']
    assert p[0] > p[-1] and p == sorted(p, reverse=True)
    assert res['segm_mAP'] == pytest.approx(1.0)  # masks untouched


def test_dump_round_trips_through_pycocotools(gt_file, tmp_path):
    prefix = str(tmp_path / 'out' / 'preds')
    res = evaluate(perfect_samples(gt_file), ann_file=gt_file, metric=['bbox', 'segm'],
                   format_only=True, outfile_prefix=prefix)
    assert res == {}
    coco = COCO(gt_file)
    for m in ('bbox', 'segm'):
        dets = json.load(open(f'{prefix}.{m}.json'))
        assert len(dets) == len(coco.dataset['annotations'])
        assert {d['category_id'] for d in dets} <= set(syn.THING_CAT_IDS)  # ids, not labels
        loaded = coco.loadRes(f'{prefix}.{m}.json')
        assert len(loaded.getAnnIds()) == len(dets)
    # a segm result decodes to the GT mask of the same image / category
    d = json.load(open(f'{prefix}.segm.json'))[0]
    gt = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=d['image_id']))
          if a['category_id'] == d['category_id']]
    mask = loaded.annToMask(d)
    assert any(np.array_equal(mask, coco.annToMask(a)) for a in gt)


def test_ranks_results_are_small_picklable_and_merge(gt_file):
    samples = perfect_samples(gt_file, as_dict=False)  # DetDataSample objects work too
    ranks = [CocoMetric(ann_file=gt_file, metric=['bbox', 'segm']) for _ in range(2)]
    for r, metric in enumerate(ranks):
        metric.dataset_meta = META
        metric.process({}, samples[r::2])
    gathered = pickle.loads(pickle.dumps(ranks[0].results)) + pickle.loads(
        pickle.dumps(ranks[1].results))
    assert len(gathered) == 8 and {g['img_id'] for g, _ in gathered} == {
        s.img_id for s in samples}
    pred = next(p for _, p in gathered if p['masks'])
    assert isinstance(pred['masks'][0]['counts'], str)  # RLE, no bitmaps kept
    assert not any(isinstance(v, torch.Tensor) for v in pred.values())
    res = ranks[0].compute_metrics(gathered)
    assert res['bbox_mAP'] == pytest.approx(1.0) and res['segm_mAP'] == pytest.approx(1.0)


def test_through_mmengine_evaluator_with_registry(gt_file):
    with DefaultScope.overwrite_default_scope('cascade_seg'):  # as a runner with default_scope
        evaluator = Evaluator([dict(type='CocoMetric', ann_file=gt_file, metric='segm')])
    assert METRICS.get('CocoMetric') is CocoMetric
    evaluator.dataset_meta = META
    samples = perfect_samples(gt_file, as_dict=False)
    evaluator.process(samples)
    res = evaluator.evaluate(len(samples))
    assert res['coco/segm_mAP'] == pytest.approx(1.0)
    assert 'coco/bbox_mAP' not in res


def test_empty_predictions_give_zero_not_crash(gt_file):
    samples = perfect_samples(gt_file)
    for s in samples:
        p = s['pred_instances']
        s['pred_instances'] = dict(bboxes=p['bboxes'][:0], scores=p['scores'][:0],
                                   labels=p['labels'][:0], masks=p['masks'][:0])
    res = evaluate(samples, ann_file=gt_file, metric=['bbox', 'segm'])
    assert res['bbox_mAP'] == 0.0 and res['segm_mAP'] == 0.0


def test_ground_truth_from_samples_without_ann_file(gt_file):
    samples = perfect_samples(gt_file)
    for s in samples:
        p = s['pred_instances']
        s['gt_instances'] = dict(bboxes=p['bboxes'].clone(), labels=p['labels'].clone(),
                                 masks=p['masks'].clone())
    res = evaluate(samples, metric=['bbox', 'segm'])
    assert res['bbox_mAP'] == pytest.approx(1.0) and res['segm_mAP'] == pytest.approx(1.0)
    for s in samples:  # drop half the predictions: recall, hence AP, falls
        s['pred_instances'] = {k: v[::2] for k, v in s['pred_instances'].items()}
    assert evaluate(samples, metric='bbox')['bbox_mAP'] < 0.9


def test_keypoints(tmp_path):
    kpts = np.array([[[10, 10, 2], [20, 12, 2], [15, 30, 2]],
                     [[40, 40, 2], [50, 45, 2], [44, 58, 2]]], np.float32)
    anns = [dict(id=i + 1, image_id=5, category_id=9, iscrowd=0, area=264.0, num_keypoints=3,
                 bbox=[float(k[:, 0].min()), float(k[:, 1].min()), 12.0, 22.0],
                 keypoints=k.ravel().tolist()) for i, k in enumerate(kpts)]
    gt = dict(images=[dict(id=5, height=64, width=64)], annotations=anns,
              categories=[dict(id=9, name='thing', keypoints=['a', 'b', 'c'])])
    ann_file = tmp_path / 'kpts.json'
    ann_file.write_text(json.dumps(gt))
    boxes = torch.tensor([[10, 10, 22, 32], [40, 40, 52, 62]], dtype=torch.float32)

    def run(points, sigmas=0.05, meta=None):
        metric = CocoMetric(ann_file=str(ann_file), metric='keypoints', kpt_oks_sigmas=sigmas)
        metric.dataset_meta = dict(classes=('thing',), **(meta or {}))
        metric.process({}, [dict(img_id=5, ori_shape=(64, 64), pred_instances=dict(
            bboxes=boxes, scores=torch.ones(2), labels=torch.zeros(2, dtype=torch.long),
            keypoints=torch.from_numpy(points[..., :2]), keypoint_scores=torch.ones(2, 3)))])
        return metric.compute_metrics(metric.results)

    res = run(kpts)
    assert res['keypoints_mAP'] == pytest.approx(1.0) and 'keypoints_mAP_s' not in res
    shifted = kpts + np.array([2, 2, 0], np.float32)
    assert run(shifted)['keypoints_mAP'] < 0.5
    # the sigmas set the scale: wider ones forgive the same 2-pixel shift (per keypoint too,
    # and from the dataset's metainfo when the metric has none)
    assert run(shifted, sigmas=0.3)['keypoints_mAP'] > 0.9
    assert run(shifted, sigmas=[0.3, 0.3, 0.3])['keypoints_mAP'] > 0.9
    assert run(shifted, sigmas=None, meta=dict(kpt_oks_sigmas=[0.3] * 3))['keypoints_mAP'] > 0.9
    # 3 keypoints and no sigmas anywhere: COCO's 17 person sigmas do not apply
    with pytest.raises(ValueError, match='kpt_oks_sigmas'):
        run(kpts, sigmas=None)
    with pytest.raises(ValueError, match='2 sigmas for 3 keypoints'):
        run(kpts, sigmas=[0.1, 0.1])


def test_bad_arguments():
    with pytest.raises(KeyError):
        CocoMetric(metric='proposal_fast')
    with pytest.raises(ValueError):
        CocoMetric(format_only=True)


def test_format_only_with_an_image_info_file(tmp_path):
    """A test-set image-info file has no 'annotations': the metric still writes results."""
    info = tmp_path / 'image_info.json'
    info.write_text(json.dumps(dict(images=[dict(id=1, height=8, width=8, file_name='a.png')],
                                    categories=[dict(id=4, name='a')])))
    metric = CocoMetric(ann_file=str(info), format_only=True,
                        outfile_prefix=str(tmp_path / 'out'))
    metric.dataset_meta = dict(classes=('a', ))
    metric.process({}, [dict(img_id=1, ori_shape=(8, 8), pred_instances=dict(
        bboxes=torch.tensor([[0., 0, 4, 4]]), scores=torch.ones(1),
        labels=torch.zeros(1, dtype=torch.long)))])
    assert metric.compute_metrics(metric.results) == {}
    (det, ) = json.load(open(tmp_path / 'out.bbox.json'))
    assert det['category_id'] == 4 and det['bbox'] == [0, 0, 4, 4]
