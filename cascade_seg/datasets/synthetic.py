"""Embedded synthetic instance-segmentation dataset written in COCO format.

Images hold textured "stuff" regions and flat-coloured "thing" shapes. Classes
differ by shape only (colours are random), objects occlude each other, and many
shapes are concave or have holes, so a filled box is a poor mask. See
docs/synthetic_dataset.md for the label layout and the arguments.
"""
import json
import os
import os.path as osp

import cv2
import numpy as np
from pycocotools import mask as mask_utils

THING_CLASSES = ('ring', 'ell', 'cross', 'crescent', 'triangle', 'ellipse')
# Deliberately non-contiguous so that the category id <-> label mapping is exercised.
THING_CAT_IDS = (2, 3, 5, 7, 11, 13)
STUFF_CLASSES = ('speckle', 'gradient', 'stripes')
# Semantic maps: thing label i (0..C-1) on its visible pixels, stuff label C + j elsewhere.
NUM_THINGS = len(THING_CLASSES)
SEMANTIC_CLASSES = THING_CLASSES + STUFF_CLASSES
IGNORE_LABEL = 255  # reserved by the pipeline; the generator itself never writes it
GENERATOR_VERSION = 1

DIFFICULTY = {
    # max_objects: objects per non-empty image are drawn from 1..max_objects
    # max_occlusion: largest fraction of an object that later objects may hide
    # noise_std: pixel noise added to the whole image
    # size_range: object diameter as a fraction of the short image side
    'easy': dict(max_objects=3, max_occlusion=0.2, noise_std=3.0, size_range=(0.25, 0.5)),
    'medium': dict(max_objects=5, max_occlusion=0.5, noise_std=6.0, size_range=(0.2, 0.45)),
    'hard': dict(max_objects=8, max_occlusion=0.7, noise_std=10.0, size_range=(0.14, 0.4)),
}


# ---------------------------------------------------------------- shapes
# Each shape is a membership test in unit coordinates (u, v in [-1, 1]); its free
# parameters are drawn from ``rng`` so instances of a class vary.

def _ring(u, v, rng):
    r2 = u * u + v * v
    return (r2 <= 1) & (r2 >= rng.uniform(0.45, 0.65) ** 2)


def _ell(u, v, rng):
    k = 2 * rng.uniform(0.3, 0.45)  # arm thickness (the unit square has side 2)
    in_square = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    return in_square & ((u <= -1 + k) | (v >= 1 - k))


def _cross(u, v, rng):
    k = rng.uniform(0.22, 0.38)
    au, av = np.abs(u), np.abs(v)
    return ((au <= 1) & (av <= k)) | ((au <= k) & (av <= 1))


def _crescent(u, v, rng):
    d, r = rng.uniform(0.35, 0.55), rng.uniform(0.75, 0.9)
    return (u * u + v * v <= 1) & ((u - d) ** 2 + v * v > r * r)


def _triangle(u, v, rng):
    apex = rng.uniform(-0.6, 0.6)  # apex at (apex, -1), base from (-1, 1) to (1, 1)
    t = (v + 1) / 2
    return (v <= 1) & (u >= apex + t * (-1 - apex)) & (u <= apex + t * (1 - apex))


def _ellipse(u, v, rng):
    return u * u + v * v <= 1


SHAPES = (_ring, _ell, _cross, _crescent, _triangle, _ellipse)  # indexed by label


def draw_shape(label, center, radii, angle, shape, rng):
    """Bool mask of one shape, evaluated at pixel centres of an image of ``shape``."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32) + 0.5
    dx, dy = xs - center[0], ys - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / radii[0]
    v = (-s * dx + c * dy) / radii[1]
    return SHAPES[label](u, v, rng)


# ---------------------------------------------------------------- textures

def _texture(kind, rng, h, w):
    """Float (h, w, 3) texture of stuff class ``kind``."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    proj = xs * np.cos(phi) + ys * np.sin(phi)
    if kind == 0:  # speckle: low-frequency blotches plus fine grain
        coarse = rng.normal(0, 1, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        return c0 + rng.uniform(20, 40) * coarse + rng.normal(0, 8, (h, w, 3))
    if kind == 1:  # gradient between two colours along a random direction
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        return c0 + t[..., None] * (c1 - c0)
    period = rng.uniform(5, 14)  # stripes: smooth sinusoid of two colours
    t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
    return c0 + t[..., None] * (c1 - c0)


def draw_background(rng, h, w):
    """Voronoi partition into 1-3 regions, each with a stuff texture.

    Returns the float image (h, w, 3) and the stuff index map (h, w) in 0..S-1.
    """
    k = int(rng.integers(1, 4))
    seeds = rng.uniform(0, 1, (k, 2)) * (w, h)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    dist = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2
    region = dist.argmin(0)
    kinds = rng.integers(0, len(STUFF_CLASSES), k)
    img = np.zeros((h, w, 3), np.float32)
    for r in range(k):
        img[region == r] = _texture(kinds[r], rng, h, w)[region == r]
    return img, kinds[region].astype(np.uint8)


# ---------------------------------------------------------------- mask encoding

def mask_to_polygon(mask):
    """Exact COCO polygon of a mask that is one 4-connected region without holes.

    Walks the pixel-edge outline (pycocotools puts pixel centres on integer
    coordinates, so corners sit at +-0.5). Returns a flat coordinate list, or
    None when the mask is empty, split, touches itself diagonally or has holes.
    """
    p = np.pad(mask.astype(bool), 1)
    nxt = {}
    for y, x in zip(*np.nonzero(p[1:-1, 1:-1])):
        y, x = int(y), int(x)
        # clockwise edges (image coordinates) wherever the neighbour is background
        edges = ((not p[y, x + 1], (x, y), (x + 1, y)),
                 (not p[y + 1, x + 2], (x + 1, y), (x + 1, y + 1)),
                 (not p[y + 2, x + 1], (x + 1, y + 1), (x, y + 1)),
                 (not p[y + 1, x], (x, y + 1), (x, y)))
        for is_edge, a, b in edges:
            if is_edge:
                if a in nxt:  # two outlines meet at a corner: not a simple polygon
                    return None
                nxt[a] = b
    if not nxt:
        return None
    start = next(iter(nxt))
    loop, vert = [start], nxt[start]
    while vert != start:
        loop.append(vert)
        vert = nxt[vert]
    if len(loop) != len(nxt):  # more than one outline: pieces or holes
        return None
    pts = np.asarray(loop, np.float64)
    turn = np.any(pts - np.roll(pts, 1, 0) != np.roll(pts, -1, 0) - pts, axis=1)
    return (pts[turn] - 0.5).ravel().tolist()


def encode_rle(mask):
    """Compressed COCO RLE with ``counts`` as str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii'))


def decode_segmentation(segm, h, w):
    """uint8 (h, w) mask of a COCO polygon list or RLE dict (compressed or not)."""
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm['counts'], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, h, w)
    else:  # compressed RLE; pycocotools accepts str or bytes counts
        rle = segm
    return mask_utils.decode(rle)


def encode_mask(mask):
    """Polygon when the mask is one simple region (and round-trips exactly), else RLE."""
    poly = mask_to_polygon(mask)
    if poly is not None and len(poly) >= 6:
        if np.array_equal(decode_segmentation([poly], *mask.shape), mask.astype(np.uint8)):
            return [poly]
    return encode_rle(mask)


def mask_box(mask):
    """Tight COCO box [x, y, w, h] (pixel-corner convention) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()),
            float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# ---------------------------------------------------------------- one image

def _difficulty_cfg(difficulty):
    if isinstance(difficulty, dict):
        return dict(DIFFICULTY['medium'], **difficulty)
    return DIFFICULTY[difficulty]


def render_sample(rng, height, width, cfg, p_empty=0.1, min_area=None):
    """Draw one image.

    Returns ``img`` uint8 (h, w, 3), ``sem`` uint8 (h, w) and a list of instances
    ``dict(label, mask, full)`` with disjoint visible masks (``full``: the whole shape, hidden
    parts included), in drawing order.
    """
    h, w = height, width
    if min_area is None:
        min_area = max(12, int(0.0015 * h * w))
    bg, stuff = draw_background(rng, h, w)
    num = 0 if rng.random() < p_empty else int(rng.integers(1, cfg['max_objects'] + 1))

    # Place objects; reject a placement that would hide too much of an earlier one.
    objs = []  # (label, full mask, visible mask)
    for _ in range(num):
        for _try in range(20):
            label = int(rng.integers(len(THING_CLASSES)))
            diam = rng.uniform(*cfg['size_range']) * min(h, w)
            aspect = rng.uniform(0.55, 1.0)
            radii = (diam / 2, diam / 2 * aspect)
            center = rng.uniform(0.1, 0.9, 2) * (w, h)
            full = draw_shape(label, center, radii, rng.uniform(0, 2 * np.pi), (h, w), rng)
            if full.sum() < min_area:
                continue
            if all((vis & ~full).sum() >= (1 - cfg['max_occlusion']) * f.sum()
                   for _, f, vis in objs):
                objs = [(lb, f, vis & ~full) for lb, f, vis in objs]
                objs.append((label, full, full.copy()))
                break

    # Annotate visible parts; an instance whose visible part is tiny is not drawn
    # at all, so every painted object is annotated.
    instances = [dict(label=lb, mask=vis, full=f) for lb, f, vis in objs
                 if vis.sum() >= min_area]

    img = bg.copy()
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for inst in instances:
        m = inst['mask']
        under = bg[m].mean(0)
        for _ in range(10):  # keep objects visible against what is under them
            color = rng.uniform(0, 255, 3)
            if np.abs(color - under).sum() > 90:
                break
        phi = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(-0.4, 0.4) * ((xs - xs[m].mean()) * np.cos(phi)
                                         + (ys - ys[m].mean()) * np.sin(phi))
        img[m] = color + shade[m, None]
    img = img + rng.normal(0, cfg['noise_std'], img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    sem = (stuff + NUM_THINGS).astype(np.uint8)
    for inst in instances:
        sem[inst['mask']] = inst['label']
    return img, sem, instances


# ---------------------------------------------------------------- dataset on disk

def _coco_info(split, args):
    return dict(description=f'cascade_seg synthetic shapes ({split})',
                version=str(GENERATOR_VERSION), classes=list(THING_CLASSES),
                cat_ids=list(THING_CAT_IDS), stuff_classes=list(STUFF_CLASSES),
                semantic_labels=list(SEMANTIC_CLASSES), ignore_label=IGNORE_LABEL,
                generator_args=args)


def _write_split(out_dir, split, first_id, num, args, cfg):
    h, w = args['image_size']
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images, anns = [], []
    for i in range(num):
        img_id = first_id + i
        # One RNG stream per image: changing the counts does not change earlier images.
        rng = np.random.default_rng([args['seed'], img_id])
        img, sem, instances = render_sample(rng, h, w, cfg, args['p_empty'])
        stem = f'{img_id:06d}'
        cv2.imwrite(osp.join(out_dir, split, stem + '.jpg'), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(osp.join(out_dir, 'semantic', stem + '.png'), sem)
        images.append(dict(id=img_id, file_name=stem + '.jpg', height=h, width=w))
        for inst in instances:
            anns.append(dict(id=len(anns) + 1, image_id=img_id,
                             category_id=THING_CAT_IDS[inst['label']],
                             segmentation=encode_mask(inst['mask']),
                             area=float(inst['mask'].sum()), bbox=mask_box(inst['mask']),
                             iscrowd=0))
    categories = [dict(id=cid, name=name, supercategory='shape')
                  for cid, name in zip(THING_CAT_IDS, THING_CLASSES)]
    coco = dict(info=_coco_info(split, args), images=images, annotations=anns,
                categories=categories)
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return ann_file


def make_synthetic_coco(out_dir, num_train=300, num_val=60, image_size=(128, 128), seed=0,
                        difficulty='medium', p_empty=0.1, force=False):
    """Generate (or reuse) the synthetic COCO dataset under ``out_dir``.

    Writes ``train/``, ``val/`` (JPEG), ``semantic/`` (PNG, one per image, same
    stem), ``annotations/instances_{train,val}.json`` and ``meta.json``. An
    existing dataset made with the same arguments is reused unless ``force``.
    Returns a dict with the paths, whether generation was skipped and per-split
    statistics (see :func:`dataset_stats`).
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    args = dict(num_train=int(num_train), num_val=int(num_val),
                image_size=[int(s) for s in image_size], seed=int(seed),
                difficulty=difficulty, p_empty=float(p_empty), version=GENERATOR_VERSION)
    cfg = _difficulty_cfg(difficulty)
    ann_files = {s: osp.join(out_dir, 'annotations', f'instances_{s}.json')
                 for s in ('train', 'val')}
    meta_file = osp.join(out_dir, 'meta.json')

    skipped = False
    if not force and osp.exists(meta_file) and all(map(osp.exists, ann_files.values())):
        with open(meta_file) as f:
            skipped = json.load(f) == args
    if not skipped:
        for sub in ('annotations', 'semantic'):
            os.makedirs(osp.join(out_dir, sub), exist_ok=True)
        if osp.exists(meta_file):
            os.remove(meta_file)  # a crash mid-way must not leave a stale "done" marker
        # Image ids are global so that stems are unique across splits (shared semantic/).
        _write_split(out_dir, 'train', 1, args['num_train'], args, cfg)
        _write_split(out_dir, 'val', 1 + args['num_train'], args['num_val'], args, cfg)
        with open(meta_file, 'w') as f:
            json.dump(args, f, indent=1)

    return dict(out_dir=out_dir, skipped=skipped, args=args,
                train_ann=ann_files['train'], val_ann=ann_files['val'],
                train_img_dir=osp.join(out_dir, 'train'), val_img_dir=osp.join(out_dir, 'val'),
                seg_dir=osp.join(out_dir, 'semantic'),
                stats={s: dataset_stats(a) for s, a in ann_files.items()})


# ---------------------------------------------------------------- keypoints (Keypoint R-CNN)

# Four landmarks of every object: the extreme points of the whole shape in the image. They are
# defined for any shape, rotation and aspect ratio, and a horizontal flip swaps left and right.
KEYPOINT_NAMES = ('top_extreme', 'bottom_extreme', 'left_extreme', 'right_extreme')
KEYPOINT_CATEGORY = dict(id=1, name='shape', supercategory='shape',
                         keypoints=list(KEYPOINT_NAMES), skeleton=[[1, 3], [3, 2], [2, 4], [4, 1]])


def extreme_points(full, visible):
    """``[(x, y, v)] * 4`` (top, bottom, left, right): the middle pixel of the shape's extreme
    row or column, at its pixel centre; ``v`` is 2 where that pixel is visible, 1 where a
    later object hides it."""
    ys, xs = np.nonzero(full)
    out = []
    for coord, other, pick in ((ys, xs, ys.min()), (ys, xs, ys.max()),
                               (xs, ys, xs.min()), (xs, ys, xs.max())):
        along = np.sort(other[coord == pick])
        mid = int(along[(len(along) - 1) // 2])
        x, y = (mid, int(pick)) if coord is ys else (int(pick), mid)
        out.append((x + 0.5, y + 0.5, 2 if visible[y, x] else 1))
    return out


def make_synthetic_keypoints(out_dir, force=False):
    """Write ``annotations/keypoints_{train,val}.json`` for the synthetic set in ``out_dir``.

    The images are drawn again from the arguments in ``meta.json`` (same RNG streams, so the
    same objects), and every instance of the instance files gets its extreme points under one
    category ``shape``: a person-keypoint-style file with :data:`KEYPOINT_NAMES`. The instance
    files are not touched. Reused when present unless ``force``. Returns the two paths.
    """
    with open(osp.join(out_dir, 'meta.json')) as f:
        args = json.load(f)
    paths = {s: osp.join(out_dir, 'annotations', f'keypoints_{s}.json') for s in ('train', 'val')}
    marker = osp.join(out_dir, 'keypoints_meta.json')
    if not force and all(map(osp.exists, paths.values())) and osp.exists(marker):
        with open(marker) as f:
            if json.load(f) == args:
                return paths
    cfg = _difficulty_cfg(args['difficulty'])
    h, w = args['image_size']
    for split, first_id, num in (('train', 1, args['num_train']),
                                 ('val', 1 + args['num_train'], args['num_val'])):
        with open(osp.join(out_dir, 'annotations', f'instances_{split}.json')) as f:
            coco = json.load(f)
        anns = iter(coco['annotations'])
        out_anns = []
        for img_id in range(first_id, first_id + num):
            rng = np.random.default_rng([args['seed'], img_id])
            _, _, instances = render_sample(rng, h, w, cfg, args['p_empty'])
            for inst in instances:
                ann = next(anns)
                assert ann['image_id'] == img_id, 'the instance file does not match meta.json'
                kpts = extreme_points(inst['full'], inst['mask'])
                out_anns.append(dict(ann, category_id=KEYPOINT_CATEGORY['id'],
                                     keypoints=[float(v) for p in kpts for v in p],
                                     num_keypoints=sum(p[2] > 0 for p in kpts)))
        info = dict(coco['info'], description=coco['info']['description'] + ', keypoints',
                    keypoint_names=list(KEYPOINT_NAMES))
        with open(paths[split], 'w') as f:
            json.dump(dict(info=info, images=coco['images'], annotations=out_anns,
                           categories=[KEYPOINT_CATEGORY]), f, separators=(',', ':'))
    with open(marker, 'w') as f:
        json.dump(args, f, indent=1)
    return paths


def dataset_stats(ann_file):
    """Statistics of a COCO instance file (masks are decoded, so any COCO file works)."""
    with open(ann_file) as f:
        coco = json.load(f)
    cats = {c['id']: c['name'] for c in coco['categories']}
    sizes = {im['id']: (im['height'], im['width']) for im in coco['images']}
    per_class = {name: 0 for name in cats.values()}
    ious, areas, n_poly, n_rle, n_crowd = [], [], 0, 0, 0
    for ann in coco['annotations']:
        per_class[cats[ann['category_id']]] += 1
        n_crowd += int(ann.get('iscrowd', 0))
        segm = ann.get('segmentation')
        if segm is None:
            continue
        if isinstance(segm, list):
            n_poly += 1
        else:
            n_rle += 1
        m = decode_segmentation(segm, *sizes[ann['image_id']])
        area = int(m.sum())
        if area:
            _, _, bw, bh = mask_box(m)
            ious.append(area / (bw * bh))  # mask inside its box: IoU = mask area / box area
            areas.append(area)
    with_objects = {a['image_id'] for a in coco['annotations']}
    return dict(images=len(coco['images']), instances=len(coco['annotations']),
                empty_images=sum(i not in with_objects for i in sizes),
                instances_per_class=per_class, polygon_masks=n_poly, rle_masks=n_rle,
                crowd=n_crowd, mean_area=float(np.mean(areas)) if areas else 0.0,
                mean_mask_box_iou=float(np.mean(ious)) if ious else float('nan'))
