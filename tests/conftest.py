"""Shared pytest fixtures. Keep each fixture small and general; add new ones below."""
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

KEYPOINT_NAMES = ['nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear']


def _rect_poly(x1, y1, x2, y2):
    return [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]


def _rect_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def _uncompressed_rle(mask):
    """Column-major run lengths starting with a run of zeros (COCO's iscrowd format)."""
    flat = np.asfortranarray(mask).flatten(order='F')
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return dict(size=list(mask.shape), counts=[int(c) for c in counts])


def _compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return dict(size=list(rle['size']), counts=rle['counts'].decode('ascii'))


def write_foreign_coco(root: Path) -> SimpleNamespace:
    """Write a tiny COCO dataset that exercises the odd corners of the format.

    Sparse category ids (3 person with 5 keypoints, 17 cat, 90 toothbrush),
    polygons (one multi-part), uncompressed RLE (crowd), compressed RLE,
    grayscale JPEG, RGBA PNG, 16-bit PNG, a nested file name, an image without
    annotations, a crowd-only image, an image below min_size=32, and a
    semantic PNG (values = contiguous label, 255 = ignore) for every image.
    Returns SimpleNamespace(root, ann_file, img_dir, seg_dir, coco (dict), masks
    {ann_id: uint8 (H, W) ground truth}).
    """
    img_dir, seg_dir, ann_dir = root / 'images', root / 'seg', root / 'annotations'
    for d in (img_dir, seg_dir, ann_dir):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = [  # id, file, (h, w), kind
        (11, 'gray.jpg', (40, 48), 'gray'),
        (12, 'rgba.png', (36, 50), 'rgba'),
        (13, 'deep.png', (32, 40), 'uint16'),
        (14, 'sub/dir/img.png', (64, 40), 'color'),
        (15, 'empty.png', (32, 32), 'color'),
        (16, 'crowd_only.png', (34, 34), 'color'),
        (17, 'tiny.png', (20, 24), 'color'),
    ]
    images = []
    for img_id, name, (h, w), kind in specs:
        path = img_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == 'gray':
            pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 'rgba':
            pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        elif kind == 'uint16':
            pixels = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        else:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert cv2.imwrite(str(path), pixels)
        seg = np.full((h, w), 255, np.uint8)
        seg[: h // 2] = 0
        seg[h // 2:, : w // 2] = 1
        seg_path = seg_dir / (name.rsplit('.', 1)[0] + '.png')
        seg_path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(seg_path), seg)
        images.append(dict(id=img_id, file_name=name, height=h, width=w))

    masks, anns = {}, []

    def add(ann_id, img_id, cat, box, segm, mask, **extra):
        x1, y1, x2, y2 = box
        masks[ann_id] = mask
        anns.append(dict(id=ann_id, image_id=img_id, category_id=cat,
                         bbox=[x1, y1, x2 - x1, y2 - y1], area=float(mask.sum()),
                         iscrowd=extra.pop('iscrowd', 0), segmentation=segm, **extra))

    # gray.jpg: polygon (cat 3) + crowd uncompressed RLE (cat 17)
    add(101, 11, 3, (4, 6, 20, 30), [_rect_poly(4, 6, 20, 30)], _rect_mask(40, 48, 4, 6, 20, 30),
        keypoints=[8, 10, 2, 6, 9, 2, 10, 9, 1, 0, 0, 0, 12, 12, 2], num_keypoints=4)
    crowd = _rect_mask(40, 48, 25, 2, 45, 20)
    add(102, 11, 17, (25, 2, 45, 20), _uncompressed_rle(crowd), crowd, iscrowd=1)
    # rgba.png: compressed RLE (cat 90) + two-part polygon (cat 17)
    rle_mask = _rect_mask(36, 50, 2, 3, 18, 30)
    add(103, 12, 90, (2, 3, 18, 30), _compressed_rle(rle_mask), rle_mask)
    two = _rect_mask(36, 50, 22, 4, 30, 12) | _rect_mask(36, 50, 34, 20, 46, 32)
    add(104, 12, 17, (22, 4, 46, 32), [_rect_poly(22, 4, 30, 12), _rect_poly(34, 20, 46, 32)], two)
    # deep.png (16-bit): polygon (cat 17)
    add(105, 13, 17, (5, 5, 25, 20), [_rect_poly(5, 5, 25, 20)], _rect_mask(32, 40, 5, 5, 25, 20))
    # sub/dir/img.png: polygon (cat 90)
    add(106, 14, 90, (10, 20, 30, 60), [_rect_poly(10, 20, 30, 60)],
        _rect_mask(64, 40, 10, 20, 30, 60))
    # crowd_only.png
    c2 = _rect_mask(34, 34, 0, 0, 20, 20)
    add(107, 16, 3, (0, 0, 20, 20), _uncompressed_rle(c2), c2, iscrowd=1)
    # tiny.png
    add(108, 17, 17, (2, 2, 12, 12), [_rect_poly(2, 2, 12, 12)], _rect_mask(20, 24, 2, 2, 12, 12))

    categories = [  # deliberately unsorted and sparse
        dict(id=90, name='toothbrush', supercategory='indoor'),
        dict(id=3, name='person', supercategory='person', keypoints=KEYPOINT_NAMES,
             skeleton=[[1, 2], [1, 3]]),
        dict(id=17, name='cat', supercategory='animal'),
    ]
    coco = dict(images=images, annotations=anns, categories=categories)
    ann_file = ann_dir / 'instances.json'
    ann_file.write_text(json.dumps(coco))
    return SimpleNamespace(root=root, ann_file=ann_file, img_dir=img_dir, seg_dir=seg_dir,
                           coco=coco, masks=masks)


@pytest.fixture
def foreign_coco(tmp_path):
    """A tiny odd-cornered COCO dataset on disk; see ``write_foreign_coco``."""
    return write_foreign_coco(tmp_path / 'foreign_coco')


@pytest.fixture
def write_coco_variant(foreign_coco):
    """``f(edit) -> ann_file``: write a copy of the foreign COCO JSON after ``edit(dict)``."""
    counter = iter(range(10**6))

    def write(edit):
        coco = copy.deepcopy(foreign_coco.coco)
        edit(coco)
        path = foreign_coco.root / 'annotations' / f'variant_{next(counter)}.json'
        path.write_text(json.dumps(coco))
        return path

    return write
