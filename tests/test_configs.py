"""Every config loads and builds; children only state what they change."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from cascade_seg.engine.num_classes import check_num_classes
from cascade_seg.engine.runner_utils import load_config
from cascade_seg.registry import MODELS

ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, '**', '*.py'), recursive=True)
                 if '_base_' not in p and osp.sep + 'specs' + osp.sep not in p)


def _rel(path):
    return osp.relpath(path, ROOT)


def _load(rel):
    """The config as the tools load it (the class count follows the dataset)."""
    return load_config(osp.join(ROOT, rel))


def _own_text(rel):
    """The config file's own text (no bases), without comments."""
    with open(osp.join(ROOT, rel)) as f:
        return '\n'.join(line.split('#')[0] for line in f)


def test_config_tree_is_complete():
    names = {_rel(p) for p in CONFIGS}
    for rel in ['mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                'mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
                'cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
                'cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
                'htc/htc-without-semantic_r50_fpn_1x_coco.py', 'htc/htc_r50_fpn_1x_coco.py',
                'htc/htc-without-semantic_r18_fpn_synthetic.py', 'htc/htc_r18_fpn_synthetic.py']:
        assert rel in names
    assert len([n for n in names if n.startswith('ablations/cascade_mask_strategy/')]) == 4
    assert len([n for n in names if n.startswith('ablations/htc_steps/')]) == 4


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_config_loads_and_model_builds(path):
    cfg = load_config(path)
    assert cfg.default_scope == 'cascade_seg'
    check_num_classes(cfg)  # every shipped config is consistent with its dataset
    with torch.device('meta'):  # build only (no memory, no init; the models run elsewhere)
        model = MODELS.build(cfg.model)
    if 'roi_head' in cfg.model:  # one-stage detectors (FCOS) have a bbox_head instead
        assert model.roi_head.num_stages == cfg.model.roi_head.num_stages
    assert type(model).__name__ == cfg.model.type


def test_children_do_not_repeat_their_parents():
    for rel in ['cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
                'cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
                'htc/htc-without-semantic_r50_fpn_1x_coco.py', 'htc/htc_r50_fpn_1x_coco.py',
                'htc/htc-without-semantic_r18_fpn_synthetic.py', 'htc/htc_r18_fpn_synthetic.py']:
        text = _own_text(rel)
        for key in ['backbone', 'neck', "'RPNHead'", "'Shared2FCBBoxHead'", "'FCNMaskHead'",
                    'bbox_roi_extractor', 'mask_roi_extractor', 'optim_wrapper', 'param_scheduler',
                    'test_pipeline', 'default_hooks']:
            assert key not in text, f'{rel} restates {key}'
    for rel in glob.glob(osp.join(ROOT, 'ablations', '*', '*.py')):
        if osp.basename(osp.dirname(rel)) == 'specs':
            continue
        lines = [ln for ln in _own_text(_rel(rel)).splitlines() if ln.strip()]
        assert len(lines) <= 3, f'{_rel(rel)} is more than a small delta'


def test_mask_rcnn_r50_matches_mmdetection_values():
    cfg = _load('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    m = cfg.model
    assert m.backbone.depth == 50 and m.backbone.frozen_stages == 1 and m.backbone.norm_eval
    assert m.backbone.init_cfg is None  # never downloads
    assert m.neck.out_channels == 256 and m.neck.num_outs == 5
    assert m.rpn_head.anchor_generator.strides == [4, 8, 16, 32, 64]
    assert m.roi_head.num_stages == 1
    assert m.roi_head.bbox_head.num_classes == m.roi_head.mask_head.num_classes == 80
    assert m.roi_head.mask_roi_extractor.roi_layer.output_size == 14
    assert m.train_cfg.rcnn.sampler.num == 512 and m.train_cfg.rpn_proposal.max_per_img == 1000
    assert cfg.optim_wrapper.optimizer.lr == 0.02 and cfg.train_cfg.max_epochs == 12


def test_cascade_stage_schema():
    for rel, proposals in [('cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', 2000),
                           ('cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py', 300)]:
        m = _load(rel).model
        head = m.roi_head
        assert head.num_stages == 3 and tuple(head.stage_loss_weights) == (1.0, 0.5, 0.25)
        assert head.bbox_head.reg_class_agnostic and head.mask_stages == 'all'
        assert head.bbox_head.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2]
        assert head.stage_overrides.s1.bbox_head.bbox_coder.target_stds == [0.05, 0.05, 0.1, 0.1]
        s2_stds = head.stage_overrides.s2.bbox_head.bbox_coder.target_stds
        assert s2_stds == [0.033, 0.033, 0.067, 0.067]
        rcnn = m.train_cfg.rcnn
        assert rcnn.assigner.pos_iou_thr == 0.5 and not rcnn.assigner.match_low_quality
        assert rcnn.stage_overrides.s1.assigner.pos_iou_thr == 0.6
        assert rcnn.stage_overrides.s2.assigner.min_pos_iou == 0.7
        assert m.train_cfg.rpn_proposal.max_per_img == proposals


def test_built_cascade_uses_per_stage_thresholds_and_stds():
    cfg = _load('cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py')
    model = MODELS.build(cfg.model)
    head = model.roi_head
    ious = [a.pos_iou_thr for a in head.assigners]
    assert ious == [0.5, 0.6, 0.7]
    stds = [tuple(round(s, 3) for s in h.bbox_coder.stds) for h in head.bbox_head]
    assert stds == [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]


def test_htc_configs():
    wos = _load('htc/htc-without-semantic_r50_fpn_1x_coco.py')
    head = wos.model.roi_head
    assert head.interleaved and head.mask_info_flow and head.mask_average == 'all'
    assert 'semantic_head' not in head
    assert wos.model.test_cfg.rcnn.score_thr == 0.001  # MMDetection's HTC recipe
    assert wos.model.train_cfg.rcnn.assigner.match_low_quality
    htc = _load('htc/htc_r50_fpn_1x_coco.py')
    assert htc.model.roi_head.semantic_head.num_classes == 183
    assert htc.model.roi_head.semantic_roi_extractor.featmap_strides == [8]
    loads = [t for t in htc.train_dataloader.dataset.pipeline if t.type == 'LoadAnnotations']
    assert loads[0].with_seg and 'seg' in htc.train_dataloader.dataset.data_prefix
    # the semantic child keeps the rest of the pipeline
    assert [t.type for t in htc.train_dataloader.dataset.pipeline] == \
        [t.type for t in wos.train_dataloader.dataset.pipeline]


def test_htc_info_flow_gives_conv_res_to_later_mask_heads():
    cfg = _load('htc/htc-without-semantic_r18_fpn_synthetic.py')
    heads = MODELS.build(cfg.model).roi_head.mask_head
    assert [heads[str(t)].with_conv_res for t in range(3)] == [False, True, True]
    assert not hasattr(heads['0'], 'conv_res') and hasattr(heads['2'], 'conv_res')


def _flat(d, prefix=''):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def test_htc_ablation_steps_differ_by_one_switch():
    names = ['step0_cascade', 'step1_interleaved', 'step2_mask_info_flow', 'step3_semantic']
    models = [_flat(_load(f'ablations/htc_steps/{n}.py').model.to_dict()) for n in names]
    diffs = [{k for k in set(a) | set(b) if a.get(k) != b.get(k)}
             for a, b in zip(models, models[1:])]
    assert diffs[0] == {'roi_head.interleaved'}
    assert diffs[1] == {'roi_head.mask_info_flow'}
    # the full HTC config: semantic branch (+ its model type name and the default mask average)
    assert {k.split('.')[1] for k in diffs[2] if k.startswith('roi_head.')} == {
        'semantic_roi_extractor', 'semantic_head', 'semantic_fusion', 'mask_average'}
    assert diffs[2] - {k for k in diffs[2] if k.startswith('roi_head.')} == {'type'}
    assert models[3]['roi_head.mask_average'] == 'all'  # == the head's default


def test_mask_strategy_ablations():
    found = {}
    for p in glob.glob(osp.join(ROOT, 'ablations', 'cascade_mask_strategy', '*.py')):
        found[Config.fromfile(p).model.roi_head.mask_stages] = p
    assert set(found) == {'first', 'last', 'all', 'shared'}


def test_synthetic_num_classes_follow_the_dataset():
    # the file does not compute a class count from its parent's class list ...
    raw = Config.fromfile(osp.join(ROOT, 'mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'))
    assert 'num_classes' not in raw.model.roi_head
    # ... loading sets it from the dataset
    cfg = _load('mask_rcnn/mask-rcnn_r18_fpn_synthetic.py')
    n = len(cfg.train_dataloader.dataset.metainfo.classes)
    assert cfg.model.roi_head.num_classes == n and check_num_classes(cfg) == n
    model = MODELS.build(cfg.model)
    assert model.roi_head.bbox_head[0].num_classes == n
    # another dataset with a different class count and no model change: a clear error
    cfg.merge_from_dict({'train_dataloader.dataset.metainfo.classes': ('a', 'b')})
    with pytest.raises(ValueError, match='model.roi_head.num_classes=2'):
        check_num_classes(cfg)
    cfg.merge_from_dict({'model.roi_head.num_classes': 2,
                         'val_dataloader.dataset.metainfo.classes': ('a', 'b'),
                         'test_dataloader.dataset.metainfo.classes': ('a', 'b')})
    assert check_num_classes(cfg) == 2


def _pipelines(cfg):
    for split in ('train', 'val', 'test'):
        dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset') or {}
        yield split, dataset, dataset.get('pipeline') or []


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_semantic_maps_only_where_the_model_uses_them(path):
    """A config loads semantic maps (and names their folder) only if its model has HTC's
    semantic branch, so a user's ``data_prefix=dict(img=...)`` leaves nothing behind."""
    cfg = Config.fromfile(path)
    semantic = 'semantic_head' in (cfg.model.get('roi_head') or {})
    for split, dataset, pipeline in _pipelines(cfg):
        loads = any(t.get('with_seg') for t in pipeline if t['type'] == 'LoadAnnotations')
        names = 'seg' in (dataset.get('data_prefix') or {})
        assert loads == names, f'{split}: with_seg={loads} but data_prefix.seg: {names}'
        assert not loads or semantic, f'{split} loads semantic maps the model does not use'
    if semantic:
        assert any(any(t.get('with_seg') for t in p if t['type'] == 'LoadAnnotations')
                   for _, _, p in _pipelines(cfg))
