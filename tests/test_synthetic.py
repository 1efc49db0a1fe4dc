import importlib.util
import json
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cascade_seg.datasets import synthetic as syn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(num_train=8, num_val=4, image_size=(64, 64), seed=3, difficulty='hard', p_empty=0.25)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('synth'))
    return syn.make_synthetic_coco(out, **TINY)


def _load(ann_file):
    with open(ann_file) as f:
        return json.load(f)


def _all_anns(res):
    for split in ('train', 'val'):
        coco = COCO(res[f'{split}_ann'])
        for ann in coco.dataset['annotations']:
            yield split, coco, ann


def test_deterministic_and_reused(tiny, tmp_path):
    again = syn.make_synthetic_coco(str(tmp_path), **TINY)
    for split in ('train', 'val'):
        with open(tiny[f'{split}_ann'], 'rb') as a, open(again[f'{split}_ann'], 'rb') as b:
            assert a.read() == b.read()
    other = syn.make_synthetic_coco(str(tmp_path / 'other'), **dict(TINY, seed=4))
    assert _load(other['train_ann'])['annotations'] != _load(tiny['train_ann'])['annotations']
    # same arguments: nothing is rewritten; changed arguments or force: regenerated
    assert syn.make_synthetic_coco(str(tmp_path), **TINY)['skipped']
    assert not syn.make_synthetic_coco(str(tmp_path), **TINY, force=True)['skipped']
    assert not syn.make_synthetic_coco(str(tmp_path), **dict(TINY, num_val=3))['skipped']


def test_files_and_coco_layout(tiny):
    train, val = _load(tiny['train_ann']), _load(tiny['val_ann'])
    assert len(train['images']) == 8 and len(val['images']) == 4
    ids = [im['id'] for im in train['images'] + val['images']]
    assert len(set(ids)) == len(ids)  # stems unique across splits (shared semantic/)
    for split, coco in (('train', train), ('val', val)):
        for im in coco['images']:
            img = cv2.imread(osp.join(tiny['out_dir'], split, im['file_name']))
            assert img.shape == (64, 64, 3)
            stem = osp.splitext(im['file_name'])[0]
            assert osp.exists(osp.join(tiny['seg_dir'], stem + '.png'))
        cat_ids = [c['id'] for c in coco['categories']]
        assert cat_ids == list(syn.THING_CAT_IDS)
        assert cat_ids != list(range(1, len(cat_ids) + 1))  # non-contiguous on purpose
        assert coco['info']['classes'] == list(syn.THING_CLASSES)
        assert coco['info']['stuff_classes'] == list(syn.STUFF_CLASSES)
    with_objects = {a['image_id'] for a in train['annotations'] + val['annotations']}
    assert any(i not in with_objects for i in ids)  # some images are empty


def test_masks_match_bbox_area_and_both_encodings(tiny):
    kinds = set()
    for _, coco, ann in _all_anns(tiny):
        m = coco.annToMask(ann)
        ys, xs = np.nonzero(m)
        assert ann['area'] == m.sum() >= 12
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        kinds.add('polygon' if isinstance(ann['segmentation'], list) else 'rle')
        if isinstance(ann['segmentation'], dict):
            assert isinstance(ann['segmentation']['counts'], str)
    assert kinds == {'polygon', 'rle'}


def test_semantic_map_matches_instances(tiny):
    num_things = len(syn.THING_CLASSES)
    label_of = {cid: i for i, cid in enumerate(syn.THING_CAT_IDS)}
    seen = set()
    for split in ('train', 'val'):
        coco = COCO(tiny[f'{split}_ann'])
        for im in coco.dataset['images']:
            sem = cv2.imread(osp.join(tiny['seg_dir'], f'{im["id"]:06d}.png'), cv2.IMREAD_UNCHANGED)
            thing = np.zeros(sem.shape, bool)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=im['id'])):
                m = coco.annToMask(ann).astype(bool)
                assert not (thing & m).any()  # visible masks are disjoint
                assert (sem[m] == label_of[ann['category_id']]).all()
                thing |= m
            # outside objects: stuff labels only
            assert ((sem[~thing] >= num_things) & (sem[~thing] < num_things + 3)).all()
            seen.update(np.unique(sem).tolist())
    assert any(v < num_things for v in seen) and any(v >= num_things for v in seen)


def test_boxes_do_not_solve_masks(tiny):
    stats = syn.dataset_stats(tiny['train_ann'])
    assert 0.2 < stats['mean_mask_box_iou'] < 0.8
    assert stats['images'] == 8
    assert stats['polygon_masks'] + stats['rle_masks'] == stats['instances']
    assert sum(stats['instances_per_class'].values()) == stats['instances']


@pytest.mark.parametrize('label', range(len(syn.THING_CLASSES)))
def test_shapes_are_distinct_and_non_box(label):
    rng = np.random.default_rng(0)
    m = syn.draw_shape(label, (32, 32), (20, 20), 0.0, (64, 64), rng)
    fill = m.sum() / np.prod(syn.mask_box(m)[2:])
    name = syn.THING_CLASSES[label]
    assert 0.2 < fill < (0.8 if name != 'ellipse' else 0.81)
    has_hole = syn.mask_to_polygon(m) is None
    assert has_hole == (name == 'ring')


def test_polygon_round_trip_and_fallbacks():
    m = np.zeros((12, 12), np.uint8)
    m[2:7, 3:9] = 1
    m[6:10, 3:5] = 1  # an L: concave, still one simple region
    poly = syn.mask_to_polygon(m)
    assert len(poly) == 12  # six corners
    assert np.array_equal(syn.decode_segmentation([poly], 12, 12), m)
    assert isinstance(syn.encode_mask(m), list)
    holed = m.copy()
    holed[3:6, 4:8] = 1
    holed[4, 5] = 0
    split = np.zeros_like(m)
    split[1, 1] = split[5, 5] = 1
    diagonal = np.eye(4, dtype=np.uint8)
    for bad in (holed, split, diagonal):
        assert syn.mask_to_polygon(bad) is None
        rle = syn.encode_mask(bad)
        assert isinstance(rle, dict)
        assert np.array_equal(syn.decode_segmentation(rle, *bad.shape), bad)


def test_difficulty_controls_object_count():
    counts = {}
    for level in ('easy', 'hard'):
        cfg = syn.DIFFICULTY[level]
        counts[level] = sum(len(syn.render_sample(np.random.default_rng(i), 64, 64, cfg, 0.0)[2])
                            for i in range(6))
    assert counts['hard'] > counts['easy']


def test_cli_prints_stats(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'make_synthetic_coco', osp.join(ROOT, 'tools', 'make_synthetic_coco.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = ['--out', str(tmp_path), '--num-train', '3', '--num-val', '2', '--size', '48',
            '--seed', '1']
    cli.main(argv)
    out = capsys.readouterr().out
    assert 'wrote dataset' in out and '[train] images 3' in out and 'polygon' in out
    assert json.load(open(tmp_path / 'meta.json'))['image_size'] == [48, 48]
    cli.main(argv)
    assert 'reused' in capsys.readouterr().out


def test_config_dataset_and_metric_end_to_end(tiny):
    """The base config reads the generated set; GT as predictions scores AP 1 (id mapping)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from cascade_seg.registry import DATASETS, METRICS

    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'datasets', 'synthetic_instance.py'))
    assert cfg.metainfo['classes'] == syn.THING_CLASSES
    # the semantic maps are loaded by the HTC config with the semantic branch only
    htc = Config.fromfile(osp.join(ROOT, 'configs', 'htc', 'htc_r18_fpn_synthetic.py'))
    with DefaultScope.overwrite_default_scope('cascade_seg'):
        train = DATASETS.build(dict(htc.train_dataloader.dataset, data_root=tiny['out_dir']))
        val = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=tiny['out_dir']))
        metric = METRICS.build(dict(cfg.val_evaluator, ann_file=tiny['val_ann']))
    item = train[0]['data_samples']
    sem = item.gt_sem_seg.sem_seg[0]
    for mask, label in zip(item.gt_instances.masks, item.gt_instances.labels):
        assert (sem[mask] == label).float().mean() > 0.95  # resized / flipped together

    metric.dataset_meta = val.metainfo
    samples = []
    for i in range(len(val)):
        s = val[i]['data_samples']
        gt = s.gt_instances
        s.pred_instances = gt.new(bboxes=gt.bboxes, labels=gt.labels, masks=gt.masks,
                                  scores=gt.bboxes.new_ones(len(gt)))
        samples.append(s.to_dict())
    metric.process({}, samples)
    res = metric.compute_metrics(metric.results)
    assert res['bbox_mAP'] == pytest.approx(1.0) and res['segm_mAP'] == pytest.approx(1.0)


# ----------------------------------------------------------------- keypoints (extreme points)
def test_extreme_points_of_a_constructed_shape():
    full = np.zeros((20, 30), bool)
    full[2:10, 5:25] = True        # a bar ...
    full[10:18, 12:15] = True      # ... with a leg: bottom extreme is the leg's middle pixel
    visible = full.copy()
    visible[:, 20:] = False        # a later object hides the right end
    (tx, ty, tv), (bx, by, bv), (lx, ly, lv), (rx, ry, rv) = syn.extreme_points(full, visible)
    assert (ty, by, lx, rx) == (2.5, 17.5, 5.5, 24.5)        # pixel centres of the extremes
    assert (tx, bx) == (14.5, 13.5) and (ly, ry) == (5.5, 5.5)  # middle of the extreme row/column
    assert (tv, bv, lv, rv) == (2, 2, 2, 1)                  # the hidden one is labelled, not visible


def test_keypoint_files_leave_instances_untouched(tiny):
    before = {s: open(tiny[f'{s}_ann'], 'rb').read() for s in ('train', 'val')}
    paths = syn.make_synthetic_keypoints(tiny['out_dir'])
    assert syn.make_synthetic_keypoints(tiny['out_dir']) == paths          # reused
    for split in ('train', 'val'):
        assert open(tiny[f'{split}_ann'], 'rb').read() == before[split]
        inst, kp = _load(tiny[f'{split}_ann']), _load(paths[split])
        assert [c['name'] for c in kp['categories']] == ['shape']
        assert kp['categories'][0]['keypoints'] == list(syn.KEYPOINT_NAMES)
        assert [(a['id'], a['bbox']) for a in kp['annotations']] == \
            [(a['id'], a['bbox']) for a in inst['annotations']]
        for ann in kp['annotations']:
            k = np.asarray(ann['keypoints']).reshape(4, 3)
            assert set(k[:, 2]) <= {1.0, 2.0} and ann['num_keypoints'] == 4
            h, w = TINY['image_size']
            assert (k[:, 0] > 0).all() and (k[:, 0] < w).all() and (k[:, 1] < h).all()
            assert k[0, 1] <= k[1, 1] and k[2, 0] <= k[3, 0]      # top above bottom, left of right


def test_keypoint_config_reads_the_files(tiny):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from cascade_seg.registry import DATASETS
    syn.make_synthetic_keypoints(tiny['out_dir'])
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'keypoint_rcnn',
                                   'keypoint-rcnn_r18_fpn_synthetic.py'))
    with DefaultScope.overwrite_default_scope('cascade_seg'):
        train = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=tiny['out_dir']))
    # left/right swap under horizontal flips, from the keypoint names
    assert train.metainfo['flip_indices'] == [0, 1, 3, 2]
    gt = next(train[i]['data_samples'].gt_instances for i in range(len(train))
              if len(train.get_data_info(i)['instances']))
    assert gt.keypoints.shape == (len(gt), 4, 3) and 'masks' not in gt
