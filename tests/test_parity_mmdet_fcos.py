"""Numerical parity with MMDetection 3.3.0's FCOS
(``fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py``: caffe R50,
P3-P7, GN towers with biases, centerness on the regression tower, norm_on_bbox, centre sampling,
GIoU) against ``configs/centermask/fcos_r50-caffe_fpn_gn-head_mmdet.py``.

Same protocol as the other MMDetection parity tests: the reference builds the model with seeded
random weights and randomised norms (BN and GN), dumps its weights, the neck features, the dense
head's raw outputs per level and the detections (score threshold 0: all 100) on a seeded
320x320 image; we load the converted weights and compare level by level, then the detections
(near-tie tolerant, see parity_utils.assert_same_detections).

Skipped without a reference interpreter, except under CI (``CI=true``), where that fails.
``CASCADE_SEG_PARITY_DUMPS=DIR`` reuses ``DIR/ref_fcos.pt``.
"""
import importlib.util
import os
import os.path as osp

import pytest
import torch

from cascade_seg.utils import convert_mmdet

from parity_utils import (FEAT_REL, REPO, MMDetDumps, assert_same_detections, assert_tensor_close,
                          build_from_config, data_sample, load_converted, max_errors,
                          mmdet_python_or_skip)

pytestmark = [pytest.mark.slow, pytest.mark.parity]

MMDET_CONFIG = 'fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py'
OURS = 'configs/centermask/fcos_r50-caffe_fpn_gn-head_mmdet.py'
# the dump keeps every detection (test_cfg.score_thr 0)
DUMP_OPTIONS = dict(model=dict(test_cfg=dict(score_thr=0.0)))
OUTPUTS = ('cls_score', 'bbox_pred', 'centerness')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    pre = os.environ.get('CASCADE_SEG_PARITY_DUMPS')
    if pre and osp.isfile(osp.join(pre, 'ref_fcos.pt')):
        yield torch.load(osp.join(pre, 'ref_fcos.pt'), map_location='cpu', weights_only=False)
        return
    python = mmdet_python_or_skip()
    dumps = MMDetDumps(python, ['fcos'], tmp_path_factory.mktemp('mmdet_ref_fcos'), size=320,
                       configs={'fcos': MMDET_CONFIG})
    try:
        yield dumps.get('fcos')
    finally:
        dumps.close()


def _model(ref, options=None):
    from cascade_seg.models.roi_heads.stage_config import merge_cfg
    model = build_from_config(OURS, merge_cfg(DUMP_OPTIONS, options or {}))
    load_converted(model, *convert_mmdet(ref['state_dict']))
    return model


def _rules(model):
    cfg = model.test_cfg
    return dict(min_mask_iou=None, max_num=cfg['max_per_img'],
                nms_iou=cfg['nms']['iou_threshold'])


@torch.no_grad()
def test_fcos_mmdet_parity(reference):
    ev = reference['eval']
    model = _model(reference)
    errors = {}

    def close(name, ours, theirs):
        errors[name] = max_errors(ours, theirs)
        assert_tensor_close(name, ours, theirs, FEAT_REL)

    # 1. neck features P3-P7
    feats = model.extract_feat(ev['batch_inputs'])
    assert len(feats) == len(ev['neck_feats']) == 5
    for lvl, (f, rf) in enumerate(zip(feats, ev['neck_feats'])):
        close(f'neck P{lvl + 3}', f, rf)
    # 2. the dense head's outputs per level: class logits, pixel distances, centerness logits
    outs = model.bbox_head(feats)
    assert len(ev['dense_head_outputs']) == 3
    for kind, ours, theirs in zip(OUTPUTS, outs, ev['dense_head_outputs']):
        for lvl, (o, t) in enumerate(zip(ours, theirs)):
            close(f'{kind} P{lvl + 3}', o, t)
    # 3. detections end to end
    pred = model.predict(ev['batch_inputs'], [data_sample(ev['metainfo'])])[0].pred_instances
    ref = ev['pred_instances']
    assert len(ref['scores']) == 100
    pairs = assert_same_detections(pred.to_dict(), ref, **_rules(model))
    boxes = max_errors(pred.bboxes[[j for _, j in pairs]], ref['bboxes'][[i for i, _ in pairs]])
    scores = max_errors(pred.scores[[j for _, j in pairs]], ref['scores'][[i for i, _ in pairs]])
    per_kind = {k: max(v[1] for n, v in errors.items() if n.startswith(k))
                for k in ('neck',) + OUTPUTS}
    print(f'\n[fcos] {len(errors)} tensors compared, max rel error per kind: ' +
          ', '.join(f'{k} {v:.2g}' for k, v in per_kind.items()) +
          f'; {len(pairs)}/100 detections paired, box max abs {boxes[0]:.3g} px, '
          f'score max abs {scores[0]:.3g}')


@torch.no_grad()
def test_fcos_paper_inference_is_not_mmdet_parity(reference):
    """The FCOS paper's score (sqrt(cls x centerness)) on the same network: same boxes, other
    scores, so the comparison must fail."""
    ev = reference['eval']
    model = _model(reference, dict(model=dict(test_cfg=dict(sqrt_score=True))))
    pred = model.predict(ev['batch_inputs'], [data_sample(ev['metainfo'])])[0].pred_instances
    with pytest.raises(AssertionError, match='not explained'):
        assert_same_detections(pred.to_dict(), ev['pred_instances'], **_rules(model))


@torch.no_grad()
def test_fcos_mmdet_checkpoint_cli(reference, tmp_path, capsys):
    """tools/convert_checkpoint.py --from mmdet on MMDetection's FCOS: every key fits."""
    spec = importlib.util.spec_from_file_location(
        'convert_checkpoint', osp.join(REPO, 'tools', 'convert_checkpoint.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src, dst = tmp_path / 'mmdet_fcos.pth', tmp_path / 'fcos.pth'
    torch.save(dict(state_dict=reference['state_dict'], meta=dict(mmdet_version='3.3.0')), src)
    assert tool.main(['--from', 'mmdet', str(src), str(dst), '--config',
                      osp.join(REPO, OURS)]) == 0
    assert 'missing' not in capsys.readouterr().out
