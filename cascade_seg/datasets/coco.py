"""COCO-format instance segmentation dataset."""
import contextlib
import io
import json
import logging
import math
import os.path as osp
import re
from typing import List, Optional

from mmengine.dataset import BaseDataset
from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from pycocotools.coco import COCO

from ..registry import DATASETS, TRANSFORMS

REQUIRED_TOP_KEYS = ('images', 'annotations', 'categories')
REQUIRED_IMAGE_KEYS = ('id', 'file_name', 'height', 'width')
BAD_ANNOTATION_POLICIES = ('error', 'skip')
MAX_LISTED = 20  # problems listed one by one in an error or in the log


def read_coco_json(ann_file, backend_args=None, image_keys=REQUIRED_IMAGE_KEYS,
                   top_keys=REQUIRED_TOP_KEYS) -> dict:
    """The annotation file as a dict, checked for COCO's top-level structure.

    An empty, truncated or otherwise invalid file, a top level that is not an
    object, a missing one of ``top_keys`` and an image entry without one of
    ``image_keys`` raise a ValueError naming the file. A missing
    ``annotations`` that ``top_keys`` allows (image-info files) reads as ``[]``.
    """
    with get_local_path(ann_file, backend_args=backend_args) as path:
        with open(path, 'rb') as f:
            raw = f.read()
    if not raw.strip():
        raise ValueError(f'{ann_file}: the annotation file is empty ({len(raw)} bytes)')
    try:
        dataset = json.loads(raw)
    except UnicodeDecodeError as err:
        raise ValueError(f'{ann_file}: not a text (UTF-8) JSON file ({err})') from None
    except json.JSONDecodeError as err:
        cut = ' (it ends there: the file looks truncated)' if err.pos >= len(raw.rstrip()) else ''
        raise ValueError(f'{ann_file}: invalid JSON at line {err.lineno}, column {err.colno} '
                         f'(byte {err.pos} of {len(raw)}): {err.msg}{cut}') from None
    if not isinstance(dataset, dict):
        raise ValueError(f'{ann_file}: not a COCO annotation file (top level is '
                         f'a {type(dataset).__name__}, expected an object)')
    for key in REQUIRED_TOP_KEYS:
        if key not in dataset and key not in top_keys:
            dataset[key] = []
        if key not in dataset:
            raise ValueError(f'{ann_file}: not a COCO annotation file '
                             f'(missing key {key!r})')
        if not isinstance(dataset[key], list):
            raise ValueError(f'{ann_file}: {key!r} must be a list, '
                             f'got a {type(dataset[key]).__name__}')
    for img in dataset['images']:
        missing = [k for k in image_keys if not isinstance(img, dict) or k not in img]
        if missing:
            what = img.get('id', img) if isinstance(img, dict) else img
            raise ValueError(f'{ann_file}: image entry {what!r} lacks {missing}')
    return dataset


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
    x, y, w, h = bbox
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return (f'bbox {list(bbox)!r} lies entirely outside the image '
                f'({width}x{height}, w x h): nothing of it is left after clipping')
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


def _listing(lines):
    more = [f'... and {len(lines) - MAX_LISTED} more'] if len(lines) > MAX_LISTED else []
    return lines[:MAX_LISTED] + more


def unsafe_file_name(file_name) -> Optional[str]:
    """Why an image ``file_name`` points outside the image folder, or None."""
    if not isinstance(file_name, str) or not file_name:
        return f'file_name {file_name!r} is not a file name'
    if osp.isabs(file_name) or file_name.startswith(('/', '\\')) or \
            re.match(r'^[A-Za-z]:', file_name):
        return f'file_name {file_name!r} is an absolute path'
    if osp.normpath(file_name.replace('\\', '/')).split('/')[0] == '..':
        return f'file_name {file_name!r} leads out of the image folder'
    return None


def _name(img):
    return img.get('file_name', f'id {img.get("id")}')


def clean_coco(dataset: dict, ann_file, on_bad_annotation='error', log_each=True,
               quiet=False):
    """Validate a COCO dict (from :func:`read_coco_json`); returns ``(kept, dropped)``.

    Checked: duplicate image ids, duplicate annotation ids, annotations whose
    ``image_id`` is not an image, and each annotation by :func:`check_annotation`.
    Under ``'error'`` any problem raises one ValueError listing them all, naming
    the file, the ids and the image files. Under ``'skip'`` every image sharing a
    duplicated id is dropped with its annotations (they cannot be attributed),
    an annotation id's later uses are dropped (the first is kept), and the
    other bad annotations are dropped; each drop is logged (``log_each``) and a
    summary with the counts follows (unless ``quiet``: the caller reports).
    ``kept`` is a new dict (inputs untouched);
    ``dropped`` is ``dict(images=[file names], annotations=[ids], reasons={reason: count})``.

    The dataset and :class:`~cascade_seg.evaluation.CocoMetric` both call this,
    so that the metric scores exactly the ground truth the dataset trains on.
    """
    if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
        raise ValueError(f"on_bad_annotation must be 'error' or 'skip', got {on_bad_annotation!r}")
    problems = []  # (reason, message)
    images_by_id = {}
    for img in dataset['images']:
        images_by_id.setdefault(img['id'], []).append(img)
    dup_images = {i: imgs for i, imgs in images_by_id.items() if len(imgs) > 1}
    for img_id, imgs in dup_images.items():
        names = ', '.join(repr(_name(i)) for i in imgs)
        problems.append(('duplicate image id',
                         f'image id {img_id!r} is used by {len(imgs)} images ({names})'))
    images = {i: imgs[0] for i, imgs in images_by_id.items() if i not in dup_images}
    known_cat_ids = {c.get('id') for c in dataset['categories'] if isinstance(c, dict)}

    kept_anns, dropped_anns, seen_ann_ids = [], [], {}
    for ann in dataset['annotations']:
        if not isinstance(ann, dict):
            problems.append(('malformed annotation', f'annotation {ann!r} is not an object'))
            dropped_anns.append(None)
            continue
        ann_id, img_id = ann.get('id'), ann.get('image_id')
        if img_id in dup_images:
            dropped_anns.append(ann_id)  # counted with its image
            continue
        img = images.get(img_id)
        if img is None:
            problems.append(('unknown image_id', f'annotation id {ann_id!r} refers to image_id '
                                                 f'{img_id!r}, which is not in "images"'))
            dropped_anns.append(ann_id)
            continue
        if ann_id in seen_ann_ids:
            first = seen_ann_ids[ann_id]
            problems.append(('duplicate annotation id',
                             f'annotation id {ann_id!r} is used again (image '
                             f'{_name(img)!r}; first used for image {first!r})'))
            dropped_anns.append(ann_id)
            continue
        seen_ann_ids[ann_id] = _name(img)
        problem = check_annotation(ann, img['height'], img['width'], known_cat_ids)
        if problem is not None:
            problems.append((_reason(problem),
                             f'bad annotation id {ann_id!r} of image {_name(img)!r}: {problem}'))
            dropped_anns.append(ann_id)
            continue
        kept_anns.append(ann)

    reasons = {}
    for reason, _ in problems:
        reasons[reason] = reasons.get(reason, 0) + 1
    if problems and on_bad_annotation == 'error':
        hint = "(set on_bad_annotation='skip' to drop such annotations)"
        if len(problems) == 1:
            raise ValueError(f'{ann_file}: {problems[0][1]} {hint}')
        lines = '\n  '.join(_listing([m for _, m in problems]))
        raise ValueError(f'{ann_file}: {len(problems)} problems:\n  {lines}\n{hint}')
    dropped = dict(images=[_name(i) for imgs in dup_images.values() for i in imgs],
                   annotations=dropped_anns, reasons=reasons)
    if problems and not quiet:
        if log_each:
            for line in _listing([m for _, m in problems]):
                print_log(f'{ann_file}: {line} -- skipped', logger='current',
                          level=logging.WARNING)
        print_log(skip_summary(ann_file, dropped), logger='current', level=logging.WARNING)
    kept = {k: v for k, v in dataset.items() if k not in ('images', 'annotations')}
    kept['images'] = [i for i in dataset['images'] if i['id'] not in dup_images]
    kept['annotations'] = kept_anns
    return kept, dropped


_REASONS = (('category_id', 'unknown category_id'), ('malformed bbox', 'malformed bbox'),
            ('non-finite bbox', 'non-finite bbox'), ('degenerate bbox', 'degenerate bbox'),
            ('bbox', 'bbox outside the image'), ('polygon with fewer', 'polygon with < 3 points'),
            ('polygon with an odd', 'odd polygon'), ('polygon is', 'malformed polygon'),
            ('empty segmentation', 'empty segmentation'), ('RLE', 'bad RLE'),
            ('unrecognised', 'unrecognised segmentation'))


def _reason(problem):
    """The short category of a :func:`check_annotation` message, for the summary."""
    return next((reason for prefix, reason in _REASONS if problem.startswith(prefix)), problem)


def skip_summary(ann_file, dropped):
    """One line: how many annotations / images ``on_bad_annotation='skip'`` dropped, and why."""
    reasons = ', '.join(f'{n} {r}' for r, n in sorted(dropped['reasons'].items()))
    images = f' and {len(dropped["images"])} images' if dropped['images'] else ''
    return (f"{ann_file}: on_bad_annotation='skip' dropped {len(dropped['annotations'])} "
            f'annotations{images} ({reasons})')


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
    see docs/data_pipeline.md. Image file names must stay under
    ``data_prefix.img`` (no ``..``, no absolute path) unless
    ``allow_external_files=True``.
    """

    METAINFO = dict(classes=None)

    def __init__(self, *args, data_prefix=dict(img=''), on_bad_annotation='error',
                 allow_external_files=False, backend_args=None, seg_map_suffix='.png',
                 pipeline=(), **kwargs):
        if on_bad_annotation not in BAD_ANNOTATION_POLICIES:
            raise ValueError("on_bad_annotation must be 'error' or 'skip', "
                             f'got {on_bad_annotation!r}')
        self.on_bad_annotation = on_bad_annotation
        self.allow_external_files = allow_external_files
        self.backend_args = backend_args
        self.seg_map_suffix = seg_map_suffix
        self.dropped = dict(images=[], annotations=[], reasons={})
        # Build transforms from this package's registry so that plain names work
        # with or without mmengine's default scope being set.
        pipeline = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(*args, data_prefix=data_prefix, pipeline=pipeline, **kwargs)

    # ----------------------------------------------------------------- loading
    def _read_coco(self) -> COCO:
        dataset = read_coco_json(self.ann_file, self.backend_args)
        for img in dataset['images']:
            problem = None if self.allow_external_files else unsafe_file_name(img['file_name'])
            if problem:
                raise ValueError(f'{self.ann_file}: image id {img["id"]!r}: {problem}; images '
                                 'must lie under data_prefix.img (set allow_external_files=True '
                                 'in the dataset config to read them anyway)')
        kept, self.dropped = clean_coco(dataset, self.ann_file, self.on_bad_annotation)
        # the metric follows the dataset's policy (CocoMetric reads it from dataset_meta)
        self._metainfo['on_bad_annotation'] = self.on_bad_annotation
        coco = COCO()  # filled by hand: COCO(path) cannot say what is missing
        coco.dataset = kept
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
        data_list = []
        for img_id in coco.getImgIds():
            img = coco.imgs[img_id]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
            data_list.append(self.parse_data_info(img, anns))
        return data_list

    def parse_data_info(self, img: dict, anns: List[dict]) -> dict:
        """One image's sample dict; ``anns`` were validated by :func:`clean_coco`."""
        file_name = img['file_name']
        seg_prefix = self.data_prefix.get('seg')
        info = dict(
            img_path=osp.join(self.data_prefix.get('img', ''), file_name),
            img_id=img['id'], height=img['height'], width=img['width'],
            seg_map_path=(osp.join(seg_prefix, file_name.rsplit('.', 1)[0] + self.seg_map_suffix)
                          if seg_prefix else None))
        instances = []
        for ann in anns:
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
