"""COCO-format instance segmentation dataset."""
import contextlib
import io
import json
import logging
import math
import os.path as osp
from typing import List, Optional

from mmengine.dataset import BaseDataset
from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from pycocotools.coco import COCO

from ..registry import DATASETS, TRANSFORMS

REQUIRED_TOP_KEYS = ('images', 'annotations', 'categories')
REQUIRED_IMAGE_KEYS = ('id', 'file_name', 'height', 'width')


def check_annotation(ann: dict, height: int, width: int, known_cat_ids) -> Optional[str]:
    """Return why a COCO annotation is unusable, or None if it is fine."""
    if ann.get('category_id') not in known_cat_ids:
        return f'category_id {ann.get("category_id")!r} is not in "categories"'
    bbox = ann.get('bbox')
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f'malformed bbox {bbox!r} (expected [x, y, w, h])'
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return f'non-finite bbox {bbox!r}'
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f'degenerate bbox {bbox!r} (width or height <= 0)'
    if 'segmentation' not in ann:
        return None  # a box-only annotation; LoadAnnotations(with_mask=True) will refuse it
    return check_segmentation(ann['segmentation'], height, width)


def check_segmentation(segm, height: int, width: int) -> Optional[str]:
    """Return why a COCO segmentation (polygons or RLE) is unusable, or None."""
    if isinstance(segm, list):
        if not segm or all(isinstance(p, list) and not p for p in segm):
            return 'empty segmentation'
        for poly in segm:
            if not isinstance(poly, list):
                return f'polygon is a {type(poly).__name__}, not a list of coordinates'
            if len(poly) < 6:
                return f'polygon with fewer than 3 points ({len(poly)} coordinates)'
            if len(poly) % 2:
                return f'polygon with an odd number of coordinates ({len(poly)})'
        return None
    if isinstance(segm, dict):
        if 'counts' not in segm or 'size' not in segm:
            return 'RLE without "counts" and "size"'
        if len(segm['counts']) == 0:
            return 'empty segmentation'
        if list(segm['size']) != [height, width]:
            return f'RLE size {list(segm["size"])} differs from the image size {[height, width]}'
        return None
    return f'unrecognised segmentation of type {type(segm).__name__}'


def keypoint_flip_indices(names) -> List[int]:
    """Left/right swap permutation from COCO keypoint names (``left_*`` <-> ``right_*``)."""
    index = {n: i for i, n in enumerate(names)}
    swapped = {'left': 'right', 'right': 'left'}
    out = []
    for i, name in enumerate(names):
        side, _, part = name.partition('_')
        out.append(index.get(f'{swapped[side]}_{part}', i) if side in swapped else i)
    return out


@DATASETS.register_module()
class CocoDataset(BaseDataset):
    """COCO-format dataset: sparse category ids become contiguous labels.

    Labels follow ``metainfo['classes']`` when given (annotations of other
    categories are dropped), otherwise the ascending order of category ids.
    ``on_bad_annotation`` is ``'error'`` (raise) or ``'skip'`` (drop and warn);
    see docs/data_pipeline.md.
    """

    METAINFO = dict(classes=None)

    def __init__(self, *args, data_prefix=dict(img=''), on_bad_annotation='error',
                 backend_args=None, seg_map_suffix='.png', pipeline=(), **kwargs):
        if on_bad_annotation not in ('error', 'skip'):
            raise ValueError("on_bad_annotation must be 'error' or 'skip', "
                             f'got {on_bad_annotation!r}')
        self.on_bad_annotation = on_bad_annotation
        self.backend_args = backend_args
        self.seg_map_suffix = seg_map_suffix
        # Build transforms from this package's registry so that plain names work
        # with or without mmengine's default scope being set.
        pipeline = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(*args, data_prefix=data_prefix, pipeline=pipeline, **kwargs)

    # ----------------------------------------------------------------- loading
    def _read_coco(self) -> COCO:
        with get_local_path(self.ann_file, backend_args=self.backend_args) as path:
            with open(path) as f:
                dataset = json.load(f)
        if not isinstance(dataset, dict):
            raise ValueError(f'{self.ann_file}: not a COCO annotation file (top level is '
                             f'a {type(dataset).__name__}, expected an object)')
        for key in REQUIRED_TOP_KEYS:
            if key not in dataset:
                raise ValueError(f'{self.ann_file}: not a COCO annotation file '
                                 f'(missing key {key!r})')
        for img in dataset['images']:
            missing = [k for k in REQUIRED_IMAGE_KEYS if k not in img]
            if missing:
                raise ValueError(f'{self.ann_file}: image entry {img.get("id", img)!r} '
                                 f'lacks {missing}')
        coco = COCO()  # filled by hand: COCO(path) cannot say what is missing
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex() chats on stdout
            coco.createIndex()
        return coco

    def _set_label_mapping(self, coco: COCO):
        cats = sorted(coco.dataset['categories'], key=lambda c: c['id'])
        classes = self._metainfo.get('classes')
        if classes:
            by_name = {c['name']: c['id'] for c in cats}
            missing = [c for c in classes if c not in by_name]
            if missing:
                raise ValueError(f'{self.ann_file}: classes {missing} from metainfo are not in '
                                 f'"categories" (available: {sorted(by_name)})')
            self.cat_ids = [by_name[c] for c in classes]
        else:
            self.cat_ids = [c['id'] for c in cats]
            self._metainfo['classes'] = tuple(c['name'] for c in cats)
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.label2cat = {i: cat_id for cat_id, i in self.cat2label.items()}
        kpt_names = next((coco.cats[c].get('keypoints') for c in self.cat_ids
                          if coco.cats[c].get('keypoints')), None)
        if kpt_names and 'flip_indices' not in self._metainfo:
            self._metainfo['keypoint_names'] = tuple(kpt_names)
            self._metainfo['flip_indices'] = keypoint_flip_indices(kpt_names)

    def load_data_list(self) -> List[dict]:
        coco = self._read_coco()
        self._set_label_mapping(coco)
        known_cat_ids = set(coco.cats)
        data_list = []
        for img_id in coco.getImgIds():
            img = coco.imgs[img_id]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
            data_list.append(self.parse_data_info(img, anns, known_cat_ids))
        return data_list

    def parse_data_info(self, img: dict, anns: List[dict], known_cat_ids) -> dict:
        file_name = img['file_name']
        seg_prefix = self.data_prefix.get('seg')
        info = dict(
            img_path=osp.join(self.data_prefix.get('img', ''), file_name),
            img_id=img['id'], height=img['height'], width=img['width'],
            seg_map_path=(osp.join(seg_prefix, file_name.rsplit('.', 1)[0] + self.seg_map_suffix)
                          if seg_prefix else None))
        instances = []
        for ann in anns:
            problem = check_annotation(ann, img['height'], img['width'], known_cat_ids)
            if problem is not None:
                self._bad_annotation(ann, file_name, problem)
                continue
            if ann.get('ignore', False) or ann['category_id'] not in self.cat2label:
                continue  # explicitly ignored, or a category outside metainfo.classes
            x, y, w, h = ann['bbox']
            inst = dict(bbox=[x, y, x + w, y + h], bbox_label=self.cat2label[ann['category_id']],
                        ignore_flag=int(bool(ann.get('iscrowd', 0))))
            if 'segmentation' in ann:
                inst['mask'] = ann['segmentation']
            if ann.get('keypoints'):
                inst['keypoints'] = ann['keypoints']
            instances.append(inst)
        info['instances'] = instances
        return info

    def _bad_annotation(self, ann: dict, file_name: str, problem: str):
        msg = (f'{self.ann_file}: bad annotation id {ann.get("id")!r} '
               f'of image {file_name!r}: {problem}')
        if self.on_bad_annotation == 'error':
            raise ValueError(msg + " (set on_bad_annotation='skip' to drop such annotations)")
        print_log(msg + ' -- skipped', logger='current', level=logging.WARNING)

    # --------------------------------------------------------------- filtering
    def filter_data(self) -> List[dict]:
        """Training only: drop images with no non-crowd instance / smaller than min_size."""
        if self.test_mode or not self.filter_cfg:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        return [d for d in self.data_list
                if min(d['width'], d['height']) >= min_size
                and not (filter_empty_gt and all(i['ignore_flag'] for i in d['instances']))]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        if 'flip_indices' in self._metainfo:
            info['flip_indices'] = list(self._metainfo['flip_indices'])
        if 'keypoint_names' in self._metainfo:  # every image's keypoints get the same K
            info['num_keypoints'] = len(self._metainfo['keypoint_names'])
        return info

    def get_cat_ids(self, idx: int) -> List[int]:
        """Category ids present in image ``idx`` (used by class-balanced wrappers)."""
        return [self.label2cat[i['bbox_label']] for i in self.get_data_info(idx)['instances']]
