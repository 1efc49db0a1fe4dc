"""Issue 12: the own-data recipe of the docs, run literally.

The recipe block is read from docs/data_pipeline.md (and must be the same block in
docs/config_guide.md). Only its ``_base_`` (made absolute) and ``data_root`` change. The data
is a generated COCO file with other class names, sparse unsorted category ids, a class count
unlike the parent's, and no semantic maps.
"""
import glob
import json
import logging
import os.path as osp
import re
import shutil

import pytest
import torch

from cascade_seg.engine.num_classes import check_num_classes, dataset_classes
from cascade_seg.engine.runner_utils import load_config
from cascade_seg.engine.user_config import frozen_random_init, warn_frozen_random_init

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p and '/specs/' not in p)
MARKER = '<!-- own-data recipe'
RECIPE_BASE = "_base_ = '../mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'"
RECIPE_ROOT = "data_root = 'data/balloons/'"
# the file's categories: sparse, unsorted ids; the synthetic shapes merged into three classes
CATEGORIES = [dict(id=90, name='balloon'), dict(id=3, name='string'), dict(id=17, name='kite')]
SHAPE_TO_CAT = {2: 90, 3: 90, 5: 3, 7: 3, 11: 17, 13: 17}


def recipe_block(doc):
    text = open(osp.join(REPO, 'docs', doc)).read()
    start = text.index(MARKER)
    match = re.search(r'```python\n(.*?)```', text[start:], re.S)
    return match.group(1)


def test_the_recipe_is_the_same_in_every_doc():
    recipe = recipe_block('data_pipeline.md')
    assert recipe == recipe_block('config_guide.md')
    assert RECIPE_BASE in recipe and RECIPE_ROOT in recipe
    assert 'num_classes' not in recipe and '_delete_' not in recipe
    getting_started = open(osp.join(REPO, 'docs', 'getting_started.md')).read()
    assert 'data_pipeline.md#using-your-own-coco-format-dataset' in getting_started


@pytest.fixture(scope='module')
def balloons(tmp_path_factory):
    """``data/balloons``-like COCO data: train.json + train/, val.json + val/, no maps."""
    from cascade_seg.datasets.synthetic import make_synthetic_coco
    src = tmp_path_factory.mktemp('shapes')
    make_synthetic_coco(str(src), num_train=8, num_val=2, image_size=(64, 64), seed=3,
                        p_empty=0.0)
    root = tmp_path_factory.mktemp('balloons')
    for split in ('train', 'val'):
        shutil.copytree(src / split, root / split)
        coco = json.loads((src / 'annotations' / f'instances_{split}.json').read_text())
        for ann in coco['annotations']:
            ann['category_id'] = SHAPE_TO_CAT[ann['category_id']]
        coco['categories'] = CATEGORIES
        coco.pop('info')
        (root / f'{split}.json').write_text(json.dumps(coco))
    assert not (root / 'semantic').exists()
    return str(root) + '/'


def user_config(tmp_path, base, data_root, metainfo=True, extra=''):
    """The recipe with ``_base_`` = ``base`` (absolute) and ``data_root``; without
    ``metainfo``, its line and both uses are left out (as the docs say one may)."""
    text = recipe_block('data_pipeline.md')
    text = text.replace(RECIPE_BASE, f'_base_ = {base!r}')
    text = text.replace(RECIPE_ROOT, f'data_root = {data_root!r}')
    if not metainfo:
        text = '\n'.join(ln for ln in text.splitlines() if not ln.startswith('metainfo ='))
        text = text.replace('metainfo=metainfo, ', '')
        assert 'metainfo' not in text
    path = tmp_path / f'user_{osp.splitext(osp.basename(base))[0]}_{int(metainfo)}.py'
    path.write_text(text + extra)
    return str(path)


def _rel(path):
    return osp.relpath(path, osp.join(REPO, 'configs'))


def test_the_recipe_loads_on_every_shipped_config(balloons, tmp_path):
    """Classes, class count, data_prefix and files are the user's whatever the parent."""
    failures = []
    for base in CONFIGS:
        try:
            cfg = load_config(user_config(tmp_path, base, balloons))
            assert set(dataset_classes(cfg).values()) == {('balloon', 'string')}
            assert check_num_classes(cfg) == 2
            for split in ('train', 'val', 'test'):
                ds = cfg[f'{split}_dataloader'].dataset
                assert ds.data_root == balloons
                assert ds.ann_file == ('train.json' if split == 'train' else 'val.json')
                assert ds.data_prefix.img == ('train/' if split == 'train' else 'val/')
            # semantic maps are the one thing the user's data_prefix does not replace, and
            # only the HTC configs with the semantic branch ask for them
            semantic = 'semantic_head' in (cfg.model.get('roi_head') or {})
            assert ('seg' in cfg.train_dataloader.dataset.data_prefix) == semantic
            # random init + frozen parts: the R50 COCO configs (warned), never the small ones
            small = '_synthetic' in base or '/ablations/' in base
            assert bool(frozen_random_init(cfg)) != small, 'frozen random init warning'
        except Exception as e:  # collect them all: one failure should not hide the others
            failures.append(f'{_rel(base)}: {type(e).__name__}: {e}')
    assert not failures, '\n'.join(failures)


def test_leaving_metainfo_out_reads_the_classes_from_the_file(balloons, tmp_path):
    for base in ('mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
                 'centermask/fcos_r18_fpn_synthetic.py',
                 'keypoint_rcnn/keypoint-rcnn_r18_fpn_synthetic.py'):
        cfg = load_config(user_config(tmp_path, osp.join(REPO, 'configs', base), balloons,
                                      metainfo=False))
        assert dataset_classes(cfg) == {}  # the parent's class names were not inherited
        key = 'bbox_head' if 'fcos' in base else 'roi_head'
        assert cfg.model[key].num_classes == 3  # balloon, string, kite from train.json


def test_head_level_num_classes_is_honoured_or_rejected(balloons, tmp_path):
    heads = "\nmodel = dict(roi_head=dict(bbox_head=dict(num_classes={n}), " \
            "mask_head=dict(num_classes={n})))\n"
    base = osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
    cfg = load_config(user_config(tmp_path, base, balloons, extra=heads.format(n=2)))
    assert cfg.model.roi_head.get('num_classes') in (None, 2) and check_num_classes(cfg) == 2
    with pytest.raises(ValueError) as err:
        load_config(user_config(tmp_path, base, balloons, extra=heads.format(n=3)))
    assert 'model.roi_head.bbox_head.num_classes=3' in str(err.value)
    assert 'train_dataloader.dataset.metainfo.classes' in str(err.value)
    # a parent that sets the one key itself (the keypoint config: 1 class) does not win
    kpt = osp.join(REPO, 'configs/keypoint_rcnn/keypoint-rcnn_r18_fpn_synthetic.py')
    extra = "\nmodel = dict(roi_head=dict(bbox_head=dict(num_classes=2)))\n"
    cfg = load_config(user_config(tmp_path, kpt, balloons, extra=extra))
    assert cfg.model.roi_head.num_classes == 2
    # --cfg-options count as the user's too
    with pytest.raises(ValueError, match='model.roi_head.num_classes=5'):
        load_config(user_config(tmp_path, base, balloons), {'model.roi_head.num_classes': 5})


def test_semantic_htc_without_maps_says_what_to_do(balloons, tmp_path):
    from cascade_seg.registry import DATASETS
    cfg = load_config(user_config(tmp_path, osp.join(REPO, 'configs/htc/htc_r18_fpn_synthetic.py'),
                                  balloons))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    with pytest.raises(FileNotFoundError) as err:
        dataset[0]
    assert 'semantic map not found' in str(err.value)
    assert 'htc-without-semantic' in str(err.value)


def test_random_init_with_frozen_parts_warns_loudly(monkeypatch):
    from cascade_seg.engine import user_config
    messages = []
    monkeypatch.setattr(user_config, 'print_log', lambda msg, **kw: messages.append((msg, kw)))
    cfg = load_config(osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'))
    found = warn_frozen_random_init(cfg)
    assert [k for k, _ in found] == ['model.backbone']
    (text, kw), = messages
    assert kw['level'] == logging.WARNING and 'RANDOM initialisation' in text
    assert 'frozen_stages=1 (the stem and stage 1 keep' in text and 'norm_eval=True' in text
    cfg.load_from = 'detector.pth'  # weights come from somewhere: no warning
    assert frozen_random_init(cfg) == []
    cfg.load_from = None
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='resnet50.pth')
    assert frozen_random_init(cfg) == []


@pytest.mark.parametrize('base', ['mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
                                  'cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
                                  'htc/htc-without-semantic_r18_fpn_synthetic.py'])
def test_the_recipe_trains_and_tests(balloons, tmp_path, base):
    """tools/train.py and tools/test.py on the recipe, a few iterations."""
    from tests.test_tools import _tool
    config = user_config(tmp_path, osp.join(REPO, 'configs', base), balloons)
    work = str(tmp_path / 'work')
    short = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=4', 'log_level=WARNING',
             'model.test_cfg.rcnn.max_per_img=20']
    runner = _tool('train').main([config, '--work-dir', work, '--cfg-options', *short])
    assert runner.iter == 2  # 8 images, batch 4
    assert runner.model.roi_head.bbox_head[0].num_classes == 2
    metrics = _tool('test').main([config, osp.join(work, 'epoch_1.pth'), '--work-dir', work,
                                  '--cfg-options', *short])
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
