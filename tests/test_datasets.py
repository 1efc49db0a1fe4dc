"""CocoDataset on a tiny foreign COCO dataset (see conftest.write_foreign_coco)."""
import numpy as np
import pytest
import torch

import cascade_seg.datasets.coco as coco_module
from cascade_seg.datasets import CocoDataset
from cascade_seg.datasets.coco import check_segmentation, keypoint_flip_indices
from cascade_seg.registry import DATASETS
from cascade_seg.structures import DetDataSample

FILTER = dict(filter_empty_gt=True, min_size=32)


def make(ds, ann_file=None, **kwargs):
    cfg = dict(data_root=str(ds.root), ann_file=str(ann_file or ds.ann_file),
               data_prefix=dict(img='images/', seg='seg/'), pipeline=[])
    cfg.update(kwargs)
    return CocoDataset(**cfg)


def info_by_file(dataset, file_name):
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        if info['img_path'].endswith(file_name):
            return info
    raise KeyError(file_name)


def test_counts_and_filtering_only_in_training(foreign_coco):
    assert len(make(foreign_coco, test_mode=True, filter_cfg=FILTER)) == 7
    train = make(foreign_coco, filter_cfg=FILTER)
    # dropped: empty.png (no annotations), crowd_only.png (only crowd), tiny.png (20 < 32)
    names = sorted(train.get_data_info(i)['img_path'].split('images/')[1]
                   for i in range(len(train)))
    assert names == ['deep.png', 'gray.jpg', 'rgba.png', 'sub/dir/img.png']
    keep_empty = make(foreign_coco, filter_cfg=dict(filter_empty_gt=False, min_size=32))
    assert len(keep_empty) == 6
    assert len(make(foreign_coco)) == 7  # no filter_cfg: nothing dropped


def test_label_mapping_follows_category_ids(foreign_coco):
    ds = make(foreign_coco, test_mode=True)
    assert ds.cat_ids == [3, 17, 90]
    assert ds.metainfo['classes'] == ('person', 'cat', 'toothbrush')
    assert ds.cat2label == {3: 0, 17: 1, 90: 2}
    assert all(ds.cat2label[ds.label2cat[label]] == label for label in range(3))
    info = info_by_file(ds, 'rgba.png')
    assert [i['bbox_label'] for i in info['instances']] == [2, 1]
    assert ds.get_cat_ids(ds.get_data_info(0)['sample_idx']) == [
        ds.label2cat[i['bbox_label']] for i in ds.get_data_info(0)['instances']]


def test_label_mapping_follows_metainfo_classes(foreign_coco):
    ds = make(foreign_coco, test_mode=True, metainfo=dict(classes=('toothbrush', 'person')))
    assert ds.cat_ids == [90, 3]
    assert ds.label2cat == {0: 90, 1: 3}
    # 'cat' annotations are outside the chosen classes and are dropped
    assert [i['bbox_label'] for i in info_by_file(ds, 'rgba.png')['instances']] == [0]
    assert info_by_file(ds, 'deep.png')['instances'] == []
    with pytest.raises(ValueError, match='zebra'):
        make(foreign_coco, metainfo=dict(classes=('zebra',)))


def test_data_info_fields(foreign_coco):
    ds = make(foreign_coco, test_mode=True)
    info = info_by_file(ds, 'sub/dir/img.png')
    root = str(foreign_coco.root)
    assert info['img_path'] == f'{root}/images/sub/dir/img.png'
    assert info['seg_map_path'] == f'{root}/seg/sub/dir/img.png'
    assert (info['img_id'], info['height'], info['width']) == (14, 64, 40)
    (inst,) = info['instances']
    assert inst['bbox'] == [10, 20, 30, 60]  # xywh [10, 20, 20, 40] -> xyxy
    gray = info_by_file(ds, 'gray.jpg')
    assert [i['ignore_flag'] for i in gray['instances']] == [0, 1]
    assert gray['instances'][0]['keypoints'][:3] == [8, 10, 2]
    assert 'keypoints' not in gray['instances'][1]
    assert isinstance(gray['instances'][1]['mask'], dict)  # uncompressed RLE kept raw
    assert gray['flip_indices'] == [0, 2, 1, 4, 3]
    assert ds.metainfo['flip_indices'] == [0, 2, 1, 4, 3]
    no_seg = make(foreign_coco, test_mode=True, data_prefix=dict(img='images/'))
    assert no_seg.get_data_info(0)['seg_map_path'] is None


def test_keypoint_flip_indices_and_segmentation_checks():
    assert keypoint_flip_indices(['nose', 'left_eye', 'right_eye', 'left_hip', 'tail']) == \
        [0, 2, 1, 3, 4]
    assert check_segmentation([[0, 0, 4, 0, 4, 4]], 8, 8) is None
    assert 'odd' in check_segmentation([[0, 0, 4, 0, 4, 4, 1]], 8, 8)
    assert 'size' in check_segmentation(dict(size=[4, 4], counts='abc'), 8, 8)


@pytest.mark.parametrize('key', ['images', 'annotations', 'categories'])
def test_non_coco_json_always_raises(foreign_coco, write_coco_variant, key):
    path = write_coco_variant(lambda c: c.pop(key))
    for mode in ('error', 'skip'):
        with pytest.raises(ValueError, match=key) as err:
            make(foreign_coco, ann_file=path, on_bad_annotation=mode)
        assert str(path) in str(err.value)


def _set(ann_id, **fields):
    def edit(coco):
        ann = next(a for a in coco['annotations'] if a['id'] == ann_id)
        ann.update(fields)
    return edit


BAD_CASES = {
    'unknown category': (_set(105, category_id=55), 'category_id 55'),
    'degenerate box': (_set(105, bbox=[5, 5, 0, 10]), 'degenerate bbox'),
    'negative height': (_set(105, bbox=[5, 5, 10, -1]), 'degenerate bbox'),
    'two-point polygon': (_set(105, segmentation=[[5, 5, 25, 20]]), 'fewer than 3 points'),
    'empty segmentation': (_set(105, segmentation=[]), 'empty segmentation'),
    'empty RLE': (_set(105, segmentation=dict(size=[32, 40], counts=[])), 'empty segmentation'),
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_annotation_error_mode(foreign_coco, write_coco_variant, case):
    edit, reason = BAD_CASES[case]
    path = write_coco_variant(edit)
    with pytest.raises(ValueError) as err:
        make(foreign_coco, ann_file=path)  # 'error' is the default
    msg = str(err.value)
    assert str(path) in msg and '105' in msg and 'deep.png' in msg and reason in msg


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_annotation_skip_mode(foreign_coco, write_coco_variant, monkeypatch, case):
    edit, reason = BAD_CASES[case]
    path = write_coco_variant(edit)
    logged = []
    monkeypatch.setattr(coco_module, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    ds = make(foreign_coco, ann_file=path, on_bad_annotation='skip', test_mode=True)
    assert len(ds) == 7
    assert info_by_file(ds, 'deep.png')['instances'] == []  # its only annotation was dropped
    assert len(info_by_file(ds, 'gray.jpg')['instances']) == 2  # others untouched
    (msg, kw), (summary, kw2) = logged  # the annotation, then the count
    assert str(path) in msg and '105' in msg and 'deep.png' in msg and reason in msg
    assert kw['level'] >= 30 and kw2['level'] >= 30  # warnings
    assert summary.startswith(f"{path}: on_bad_annotation='skip' dropped 1 annotations (1 ")
    assert ds.dropped['annotations'] == [105]


def test_invalid_on_bad_annotation_value(foreign_coco):
    with pytest.raises(ValueError, match='on_bad_annotation'):
        make(foreign_coco, on_bad_annotation='ignore')


def _pipeline(with_seg=True, flip_prob=0.0):
    return [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=with_seg,
             with_keypoints=True),
        dict(type='Resize', scale=(80, 64), keep_ratio=True),
        dict(type='RandomFlip', prob=flip_prob),
        dict(type='PackDetInputs'),
    ]


def test_end_to_end_build_and_getitem(foreign_coco):
    cfg = dict(type='CocoDataset', data_root=str(foreign_coco.root),
               ann_file='annotations/instances.json',
               data_prefix=dict(img='images/', seg='seg/'), filter_cfg=FILTER,
               pipeline=_pipeline(flip_prob=1.0))
    ds = DATASETS.build(cfg)
    assert len(ds) == 4
    for i in range(len(ds)):
        out = ds[i]
        sample = out['data_samples']
        assert isinstance(sample, DetDataSample)
        img = out['inputs']
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        h, w = sample.img_shape
        assert tuple(img.shape[1:]) == (h, w) and max(h, w) <= 80 and min(h, w) <= 64
        assert sample.flip is True
        gt = sample.gt_instances
        assert gt.masks.shape[1:] == (h, w) and gt.masks.dtype == torch.bool
        assert gt.bboxes.dtype == torch.float32 and gt.labels.dtype == torch.int64
        assert tuple(sample.gt_sem_seg.sem_seg.shape) == (1, h, w)
        assert len(gt) >= 1
        if sample.img_path.endswith('gray.jpg'):
            assert len(sample.ignored_instances) == 1
            assert tuple(gt.keypoints.shape) == (1, 5, 3)


def test_missing_image_file_raises_naming_path(foreign_coco):
    (foreign_coco.img_dir / 'deep.png').unlink()
    ds = make(foreign_coco, test_mode=True, pipeline=_pipeline(with_seg=False))
    idx = next(i for i in range(len(ds)) if ds.get_data_info(i)['img_path'].endswith('deep.png'))
    with pytest.raises(FileNotFoundError, match='deep.png'):
        ds[idx]


def test_serialized_and_plain_data_lists_agree(foreign_coco):
    a = make(foreign_coco, test_mode=True)
    b = make(foreign_coco, test_mode=True, serialize_data=False)
    for i in range(len(a)):
        ia, ib = a.get_data_info(i), b.get_data_info(i)
        assert ia['img_path'] == ib['img_path']
        assert np.allclose([x['bbox'] for x in ia['instances']] or 0,
                           [x['bbox'] for x in ib['instances']] or 0)
