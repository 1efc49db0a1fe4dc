"""Loading, geometric and packing transforms on tiny images."""
import copy
import random

import cv2
import numpy as np
import pytest
import torch

from cascade_seg.datasets import CocoDataset
from cascade_seg.datasets.transforms import (LoadAnnotations, LoadImageFromFile, PackDetInputs,
                                             Pad, RandomFlip, Resize)
from cascade_seg.datasets.transforms.transforms import rescale_size
from cascade_seg.registry import TRANSFORMS

FLIP_INDICES = [0, 2, 1, 4, 3]


def load(ds_fixture, file_name, with_seg=True):
    """Raw data info of one image of the foreign dataset, loaded with all annotations."""
    ds = CocoDataset(data_root=str(ds_fixture.root), ann_file=str(ds_fixture.ann_file),
                     data_prefix=dict(img='images/', seg='seg/'), test_mode=True)
    idx = next(i for i in range(len(ds))
               if ds.get_data_info(i)['img_path'].endswith(file_name))
    results = LoadImageFromFile()(ds.get_data_info(idx))
    return LoadAnnotations(with_seg=with_seg, with_keypoints=True)(results)


def mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def synthetic_results(h=30, w=40):
    rng = np.random.default_rng(1)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 2:12, 3:20] = 1
    masks[1, 15:28, 25:38] = 1
    kpts = np.array([[[5, 4, 2], [8, 5, 2], [14, 5, 1], [0, 0, 0], [18, 9, 2]]] * 2, np.float32)
    return dict(img=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), img_shape=(h, w),
                ori_shape=(h, w),
                gt_bboxes=np.array([[3, 2, 20, 12], [25, 15, 38, 28]], np.float32),
                gt_bboxes_labels=np.array([0, 1]), gt_ignore_flags=np.array([False, True]),
                gt_masks=masks, gt_keypoints=kpts,
                gt_seg_map=rng.integers(0, 3, (h, w)).astype(np.uint8))


# --------------------------------------------------------------------------- loading
def test_load_image_formats(foreign_coco):
    src = foreign_coco.img_dir
    gray = LoadImageFromFile()(dict(img_path=str(src / 'gray.jpg')))
    assert gray['img'].shape == (40, 48, 3) and gray['img'].dtype == np.uint8
    assert gray['img_shape'] == gray['ori_shape'] == (40, 48)
    assert (gray['img'][..., 0] == gray['img'][..., 2]).all()

    rgba = LoadImageFromFile()(dict(img_path=str(src / 'rgba.png')))['img']
    raw = cv2.imread(str(src / 'rgba.png'), cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4 and rgba.shape == (36, 50, 3)
    assert (rgba == raw[..., :3]).all()

    deep = LoadImageFromFile()(dict(img_path=str(src / 'deep.png')))['img']
    raw16 = cv2.imread(str(src / 'deep.png'), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16 and deep.dtype == np.uint8 and deep.shape == (32, 40, 3)
    assert np.abs(deep.astype(int) - raw16 / 257).max() <= 0.5 + 1e-6

    nested = LoadImageFromFile(to_float32=True)(dict(img_path=str(src / 'sub/dir/img.png')))
    assert nested['img'].dtype == np.float32 and nested['img'].shape == (64, 40, 3)
    gray1 = LoadImageFromFile(color_type='grayscale')(dict(img_path=str(src / 'gray.jpg')))
    assert gray1['img'].shape == (40, 48, 1)


def test_load_image_errors(foreign_coco, tmp_path):
    missing = tmp_path / 'nope' / 'missing.jpg'
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        LoadImageFromFile()(dict(img_path=str(missing)))
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'not an image at all')
    with pytest.raises(ValueError, match='corrupt.png'):
        LoadImageFromFile()(dict(img_path=str(corrupt)))
    with pytest.raises(ValueError, match='annotation says'):
        LoadImageFromFile()(dict(img_path=str(foreign_coco.img_dir / 'gray.jpg'),
                                 height=41, width=48))


def test_load_annotations_all_mask_formats(foreign_coco):
    r = load(foreign_coco, 'gray.jpg')  # polygon + crowd uncompressed RLE
    assert r['gt_bboxes'].dtype == np.float32 and r['gt_bboxes'].shape == (2, 4)
    assert r['gt_bboxes_labels'].dtype == np.int64 and list(r['gt_bboxes_labels']) == [0, 1]
    assert r['gt_ignore_flags'].dtype == bool and list(r['gt_ignore_flags']) == [False, True]
    assert r['gt_masks'].dtype == np.uint8 and r['gt_masks'].shape == (2, 40, 48)
    assert (r['gt_masks'][0] == foreign_coco.masks[101]).all()
    assert (r['gt_masks'][1] == foreign_coco.masks[102]).all()
    assert r['gt_keypoints'].dtype == np.float32 and r['gt_keypoints'].shape == (2, 5, 3)
    assert r['gt_keypoints'][0, 1].tolist() == [6, 9, 2] and not r['gt_keypoints'][1].any()
    assert r['gt_seg_map'].dtype == np.uint8 and r['gt_seg_map'].shape == (40, 48)
    assert set(np.unique(r['gt_seg_map'])) == {0, 1, 255}

    r = load(foreign_coco, 'rgba.png')  # compressed RLE + two-part polygon
    assert (r['gt_masks'][0] == foreign_coco.masks[103]).all()
    assert (r['gt_masks'][1] == foreign_coco.masks[104]).all()
    np.testing.assert_array_equal(r['gt_bboxes'], [[2, 3, 18, 30], [22, 4, 46, 32]])


def test_load_annotations_empty_shapes(foreign_coco):
    r = load(foreign_coco, 'empty.png')
    assert r['gt_bboxes'].shape == (0, 4) and r['gt_bboxes'].dtype == np.float32
    assert r['gt_bboxes_labels'].shape == (0,) and r['gt_ignore_flags'].shape == (0,)
    assert r['gt_masks'].shape == (0, 32, 32) and r['gt_masks'].dtype == np.uint8
    # the dataset's keypoint count (5 names in the 'person' category), even without instances
    assert r['gt_keypoints'].shape == (0, 5, 3)
    with pytest.raises(ValueError, match='seg_map_path'):
        LoadAnnotations(with_seg=True)(dict(img_path='x.png', seg_map_path=None, instances=[],
                                            height=4, width=4))


# --------------------------------------------------------------------------- resize
def test_rescale_size_matches_mmdet_rule():
    assert rescale_size(48, 40, (1333, 800)) == (960, 800)  # short edge limits
    assert rescale_size(400, 100, (1333, 800)) == (1333, 333)  # long edge limits
    assert rescale_size(48, 40, (800, 1333)) == (960, 800)  # order of the pair does not matter


def test_resize_keeps_boxes_masks_keypoints_consistent(foreign_coco):
    r = load(foreign_coco, 'rgba.png')  # 36 x 50
    before = copy.deepcopy(r)
    out = Resize(scale=(100, 60), keep_ratio=True)(r)
    assert out['img_shape'] == (60, 83) and out['img'].shape == (60, 83, 3)
    sw, sh = out['scale_factor']
    assert sw == pytest.approx(83 / 50) and sh == pytest.approx(60 / 36)
    np.testing.assert_allclose(out['gt_bboxes'], before['gt_bboxes'] * [sw, sh, sw, sh], rtol=1e-5)
    for box, mask in zip(out['gt_bboxes'], out['gt_masks']):
        assert np.abs(mask_box(mask) - box).max() <= 1.0  # mask extent ~= resized box
    assert out['gt_masks'].shape == (2, 60, 83) and out['gt_masks'].dtype == np.uint8
    assert set(np.unique(out['gt_seg_map'])) <= {0, 1, 255} and out['gt_seg_map'].shape == (60, 83)

    r = synthetic_results()
    kpts = r['gt_keypoints'].copy()
    out = Resize(scale=(80, 45), keep_ratio=False)(r)  # exact (w, h)
    assert out['img_shape'] == (45, 80) and out['scale_factor'] == (2.0, 1.5)
    np.testing.assert_allclose(out['gt_keypoints'][..., 0], kpts[..., 0] * 2)
    np.testing.assert_allclose(out['gt_keypoints'][..., 1], kpts[..., 1] * 1.5)
    np.testing.assert_array_equal(out['gt_keypoints'][..., 2], kpts[..., 2])


def test_resize_clips_boxes_and_handles_empty():
    r = synthetic_results()
    r['gt_bboxes'][0] = [-5, -5, 45, 35]  # sticks out of the 40 x 30 image
    r['gt_masks'] = r['gt_masks'][:0]
    out = Resize(scale=(20, 15), keep_ratio=False)(r)
    np.testing.assert_allclose(out['gt_bboxes'][0], [0, 0, 20, 15])
    assert out['gt_masks'].shape == (0, 15, 20)


def test_resize_picks_among_listed_scales():
    random.seed(0)
    t = TRANSFORMS.build(dict(type='Resize', scale=[(1333, 20), (1333, 40)], keep_ratio=True))
    shapes = {t(synthetic_results(10, 10))['img_shape'] for _ in range(20)}
    assert shapes == {(20, 20), (40, 40)}


# --------------------------------------------------------------------------- flip
@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
def test_flip_twice_is_identity(direction):
    r = synthetic_results()
    before = copy.deepcopy(r)
    flip = RandomFlip(prob=1.0, direction=direction, flip_indices=FLIP_INDICES)
    once = flip(r)
    assert once['flip'] is True and once['flip_direction'] == direction
    assert not np.array_equal(once['img'], before['img'])
    twice = flip(copy.deepcopy(once))
    for key in ('img', 'gt_bboxes', 'gt_masks', 'gt_keypoints', 'gt_seg_map'):
        np.testing.assert_array_equal(twice[key], before[key], err_msg=key)


def test_horizontal_flip_geometry_and_keypoint_swap():
    r = synthetic_results()
    before = copy.deepcopy(r)
    out = RandomFlip(prob=1.0)(dict(r, flip_indices=FLIP_INDICES))  # indices from results
    np.testing.assert_allclose(out['gt_bboxes'][0], [40 - 20, 2, 40 - 3, 12])
    for box, mask in zip(out['gt_bboxes'], out['gt_masks']):
        np.testing.assert_array_equal(mask_box(mask), box)
    np.testing.assert_array_equal(out['gt_seg_map'], before['gt_seg_map'][:, ::-1])
    kp = out['gt_keypoints'][0]
    # left_eye (index 1) now holds the mirrored right_eye (index 2), and vice versa
    assert kp[1].tolist() == [40 - 14, 5, 1] and kp[2].tolist() == [40 - 8, 5, 2]
    assert kp[0].tolist() == [40 - 5, 4, 2]
    assert kp[4].tolist() == [0, 0, 0]  # unlabelled right_ear moved into the left_ear slot...
    assert kp[3].tolist() == [40 - 18, 9, 2]  # ...and labelled right_ear became left_ear


def test_flip_probability_and_missing_flip_indices():
    out = RandomFlip(prob=0.0)(synthetic_results())
    assert out['flip'] is False and out['flip_direction'] is None
    with pytest.raises(ValueError, match='flip_indices'):
        RandomFlip(prob=1.0)(synthetic_results())
    with pytest.raises(ValueError):
        RandomFlip(direction='sideways')


# --------------------------------------------------------------------------- pad
def test_pad_to_divisor_and_fixed_size():
    r = synthetic_results(30, 40)
    out = Pad(size_divisor=16, pad_val=dict(img=7, seg=255))(copy.deepcopy(r))
    assert out['img'].shape == (32, 48, 3) and out['pad_shape'] == (32, 48)
    assert out['img_shape'] == (30, 40)  # unpadded frame, per design.md
    assert (out['img'][30:] == 7).all() and (out['img'][:, 40:] == 7).all()
    np.testing.assert_array_equal(out['img'][:30, :40], r['img'])
    assert out['gt_masks'].shape == (2, 32, 48) and not out['gt_masks'][:, 30:].any()
    assert (out['gt_seg_map'][30:] == 255).all() and (out['gt_seg_map'][:, 40:] == 255).all()
    np.testing.assert_array_equal(out['gt_bboxes'], r['gt_bboxes'])

    out = Pad(size=(50, 35))(copy.deepcopy(r))
    assert out['img'].shape == (35, 50, 3) and (out['img'][30:] == 0).all()
    with pytest.raises(ValueError):
        Pad(size=(10, 10))(copy.deepcopy(r))
    with pytest.raises(ValueError):
        Pad()


# --------------------------------------------------------------------------- packing
def test_pack_det_inputs_fields_and_dtypes():
    r = synthetic_results()
    r.update(img_id=5, img_path='a/b.png', scale_factor=(2.0, 2.0), flip=True,
             flip_direction='horizontal')
    out = PackDetInputs()(copy.deepcopy(r))
    inputs, sample = out['inputs'], out['data_samples']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 30, 40) and inputs.is_contiguous()
    assert torch.equal(inputs, torch.from_numpy(r['img']).permute(2, 0, 1))
    gt, ign = sample.gt_instances, sample.ignored_instances
    assert len(gt) == 1 and len(ign) == 1
    assert gt.bboxes.dtype == torch.float32 and gt.bboxes.tolist() == [[3, 2, 20, 12]]
    assert ign.bboxes.tolist() == [[25, 15, 38, 28]]
    assert gt.labels.dtype == torch.int64 and gt.labels.tolist() == [0]
    assert gt.masks.dtype == torch.bool and gt.masks.shape == (1, 30, 40)
    assert torch.equal(gt.masks[0], torch.from_numpy(r['gt_masks'][0] > 0))
    assert gt.keypoints.dtype == torch.float32 and gt.keypoints.shape == (1, 5, 3)
    assert sample.gt_sem_seg.sem_seg.dtype == torch.int64
    assert sample.gt_sem_seg.sem_seg.shape == (1, 30, 40)
    assert sample.img_id == 5 and sample.img_path == 'a/b.png' and sample.flip is True
    assert sample.scale_factor == (2.0, 2.0) and sample.pad_shape == (30, 40)


def test_pack_det_inputs_defaults_and_no_annotations():
    out = PackDetInputs()(dict(img=np.zeros((4, 6, 3), np.uint8), img_shape=(4, 6),
                               ori_shape=(4, 6), img_id=1, img_path='x.png'))
    s = out['data_samples']
    assert s.flip is False and s.flip_direction is None and s.scale_factor == (1.0, 1.0)
    assert 'gt_instances' not in s
    empty = PackDetInputs()(dict(img=np.zeros((4, 6, 3), np.uint8), img_shape=(4, 6),
                                 gt_bboxes=np.zeros((0, 4), np.float32),
                                 gt_bboxes_labels=np.zeros(0, np.int64),
                                 gt_ignore_flags=np.zeros(0, bool),
                                 gt_masks=np.zeros((0, 4, 6), np.uint8)))['data_samples']
    assert empty.gt_instances.bboxes.shape == (0, 4) and empty.gt_instances.masks.shape == (0, 4, 6)
