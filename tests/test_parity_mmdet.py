"""Numerical parity with MMDetection 3.3.0 on its own (converted) weights.

The reference (MMDetection in its own virtualenv, see ../shared/mmdet_ref/README.md) builds each
R50-FPN model with seeded random weights and randomised norm layers, runs it on a seeded 320x320
image and dumps its weights and every intermediate result. We convert the weights with
``convert_mmdet``, feed the same preprocessed batch and compare stage by stage, so a failure
names the first stage that parts: neck features, RPN outputs and proposals, stage-0 box outputs
on the reference's proposals, every box/mask head call, final detections.
Skipped when no reference interpreter can be found, except under CI (``CI=true``), where a
missing reference fails the run.
"""
import os
import os.path as osp

import pytest
import torch

from cascade_seg.models.roi_heads.stage_config import merge_cfg
from cascade_seg.models.task_utils import boxes_to_rois
from cascade_seg.structures import DetDataSample
from cascade_seg.utils import convert_mmdet
from mmengine.structures import InstanceData

from parity_utils import (MMDetDumps, assert_same_detections, assert_tensor_close,
                          build_from_config, find_mmdet_python, load_converted, permutation,
                          pre_nms_detections, record_head_calls, unpaired)

pytestmark = [pytest.mark.slow, pytest.mark.parity]

# reference alias -> our parity config
MODELS = {
    'mask_rcnn': 'configs/mask_rcnn/mask-rcnn_r50_fpn_mmdet.py',
    'cascade_mask_rcnn': 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_mmdet.py',
    'htc_wo_sem': 'configs/htc/htc-without-semantic_r50_fpn_mmdet.py',
    'htc': 'configs/htc/htc_r50_fpn_mmdet.py',
}
SIZE = 320
# Tensors: max abs error relative to the reference's max |value|. Float32 sums in another
# order through ResNet-50 give ~1e-4; a real difference (e.g. RoIAlign aligned=True vs False)
# gives > 1e-1.
FEAT_REL = 5e-4
# Head calls run on our own proposals / detections, which carry float noise of their own (RoI
# coordinates differ in the last bits), hence looser than the stage-0 check on shared inputs.
CALL_REL = 1e-3


@pytest.fixture(scope='session')
def mmdet_python():
    python, why = find_mmdet_python()
    if python is None:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(f'CI must run the MMDetection parity tests: {why}')
        pytest.skip(why)
    return python


@pytest.fixture(scope='session')
def reference(mmdet_python, tmp_path_factory, request):
    """``reference(alias)`` -> its dump, from ``$CASCADE_SEG_PARITY_DUMPS/ref_<alias>.pt``
    when that exists, else from one background reference run over the selected models."""
    pre = os.environ.get('CASCADE_SEG_PARITY_DUMPS')
    if pre and all(osp.isfile(osp.join(pre, f'ref_{a}.pt')) for a in MODELS):
        yield lambda alias: torch.load(osp.join(pre, f'ref_{alias}.pt'), map_location='cpu',
                                       weights_only=False)
        return
    ids = ' '.join(item.nodeid for item in request.session.items)
    selected = [a for a in MODELS if f'test_mmdet_parity[{a}]' in ids or any(
        f'test_mmdet_parity_can_fail[{case}]' in ids and CAN_FAIL[case][0] == a
        for case in CAN_FAIL)]
    selected = selected or list(MODELS)
    dumps = MMDetDumps(mmdet_python, selected, tmp_path_factory.mktemp('mmdet_ref'), size=SIZE)
    try:
        yield dumps.get
    finally:
        dumps.close()


def data_sample(metainfo):
    meta = {k: tuple(v) if isinstance(v, list) else v for k, v in metainfo.items()}
    return DetDataSample(metainfo=meta)


def compare_head_calls(kind, ours, ref, perm):
    """Every ``kind`` ('bbox'|'mask') head call, in order: same count, same outputs.

    ``perm[i]`` is our row for the reference's row ``i`` (-1 where a near-tie flip left it
    without a partner; such rows are not compared). A call's outputs are the logits (box:
    cls_score, bbox_pred; mask: logits) and, for HTC's information flow, the mask feature; each
    of ours is compared with the reference output of the same shape (ours may skip logits
    nobody uses).
    """
    o = [c for c in ours if c['kind'] == kind]
    r = [c for c in ref if c['module'].startswith(f'roi_head.{kind}_head')]
    assert len(o) == len(r), f'{len(o)} {kind} head calls vs {len(r)} in the reference'
    paired = perm >= 0
    for i, (oc, rc) in enumerate(zip(o, r)):
        for t in oc['outputs']:
            same = [x for x in rc['outputs'] if x.shape[1:] == t.shape[1:]]
            assert same, f'{kind} call {i}: output {tuple(t.shape)} not in the reference'
            assert_tensor_close(f'{kind} call {i} ({oc["name"]}) output {tuple(t.shape)}',
                                t[perm[paired]], same[0][paired], rel=CALL_REL)


def nms_rules(cfg):
    """The post-processing that both sides share, for telling near-tie flips from errors."""
    return dict(max_num=cfg['max_per_img'], nms_iou=cfg['nms']['iou_threshold'])


@pytest.mark.parametrize('alias', list(MODELS))
def test_mmdet_parity(alias, reference):
    check_parity(MODELS[alias], reference(alias))


# A real difference must still fail, whatever near-ties the comparisons forgive.
CAN_FAIL = {
    'roi_align_unaligned': ('mask_rcnn', dict(roi_head=dict(bbox_roi_extractor=dict(
        roi_layer=dict(aligned=False)))), 'stage-0 cls_score'),
    'last_stage_scores': ('cascade_mask_rcnn', dict(roi_head=dict(score_average='last')),
                          'not explained by a near-tie'),
    'every_stage_masks': ('htc_wo_sem', dict(roi_head=dict(mask_average='all')), 'mask'),
}


@pytest.mark.parametrize('case', list(CAN_FAIL))
def test_mmdet_parity_can_fail(case, reference):
    alias, change, where = CAN_FAIL[case]
    with pytest.raises(AssertionError, match=where):
        check_parity(MODELS[alias], reference(alias), dict(model=change))


@torch.no_grad()
def check_parity(config, ref, cfg_options=None):
    """Our model from ``config`` (+ ``cfg_options``) on the reference's converted weights and
    batch, compared stage by stage; the first stage that parts raises AssertionError."""
    ev = ref['eval']
    # the dump keeps every detection (score_thr 0) to exercise masks
    options = dict(model=dict(test_cfg=dict(rcnn=dict(score_thr=0.0))))
    model = build_from_config(config, merge_cfg(options, cfg_options or {}))
    load_converted(model, *convert_mmdet(ref['state_dict']))
    inputs = ev['batch_inputs']
    sample = data_sample(ev['metainfo'])
    rpn_rules, rcnn_rules = nms_rules(model.test_cfg['rpn']), nms_rules(model.test_cfg['rcnn'])

    # 1. neck features
    feats = model.extract_feat(inputs)
    assert len(feats) == len(ev['neck_feats'])
    for lvl, (f, rf) in enumerate(zip(feats, ev['neck_feats'])):
        assert_tensor_close(f'neck P{lvl + 2}', f, rf, FEAT_REL)

    # 2. RPN raw outputs and proposals
    cls_scores, bbox_preds = model.rpn_head(feats)
    for lvl in range(len(feats)):
        assert_tensor_close(f'rpn_cls P{lvl + 2}', cls_scores[lvl], ev['rpn_cls_scores'][lvl],
                            FEAT_REL)
        assert_tensor_close(f'rpn_reg P{lvl + 2}', bbox_preds[lvl], ev['rpn_bbox_preds'][lvl],
                            FEAT_REL)
    proposals = model.rpn_head.predict(feats, [sample])[0]
    rp = ev['rpn_proposals']
    # paired regardless of rank; the 1000-proposal cut and NMS may split near-ties apart
    roi_pairs = assert_same_detections(proposals.to_dict(), rp, min_mask_iou=None,
                                       class_agnostic_nms=True, **rpn_rules)

    # 3. stage-0 box head on the reference's proposals
    roi_head = model.roi_head
    if 'semantic_feat' in ev:
        assert_tensor_close('semantic feature', roi_head.semantic_head(feats)[1],
                            ev['semantic_feat'], FEAT_REL)
    roi_feats, _ = roi_head.roi_features(feats, [sample])
    cls0, reg0, _ = roi_head.bbox_forward(0, roi_feats, boxes_to_rois([rp['bboxes']]))
    assert_tensor_close('stage-0 cls_score', cls0, ev['stage0_cls_score'], FEAT_REL)
    assert_tensor_close('stage-0 bbox_pred', reg0, ev['stage0_bbox_pred'], FEAT_REL)

    # 4. the RoI head on the reference's proposals, recording every box/mask head call: the
    # same inputs, so every box head row is compared, and every mask row of paired detections
    pred = ev['pred_instances']
    calls, remove = record_head_calls(model)
    try:
        given = InstanceData(bboxes=rp['bboxes'], scores=rp['scores'])
        out = roi_head.predict(feats, [given], [sample])[0]
    finally:
        remove()
    compare_head_calls('bbox', calls, ev['head_calls'], torch.arange(len(rp['scores'])))
    det_pairs = assert_same_detections(out.to_dict(), pred, **rcnn_rules)
    compare_head_calls('mask', calls, ev['head_calls'], permutation(det_pairs, len(pred['scores'])))

    # 5. end to end; a proposal that only one side has (a near-tie flip of step 2) may add
    # detections or suppress some: each must be traced to it
    out = model.predict(inputs, [data_sample(ev['metainfo'])])[0].pred_instances
    extra_ours, extra_ref = (
        pre_nms_detections(roi_head, feats, boxes[unpaired(roi_pairs, len(boxes), side)], sample)
        for boxes, side in ((proposals.bboxes, 1), (rp['bboxes'], 0)))
    assert_same_detections(out.to_dict(), pred, extra_ours=extra_ours, extra_ref=extra_ref,
                           **rcnn_rules)


# ----------------------------------------------------------------------------- key mapping
# (no reference needed)

def test_mmdet_key_mapping():
    t = torch.zeros(2)
    sd = {'backbone.layer1.0.bn1.num_batches_tracked': torch.tensor(3),
          'neck.fpn_convs.0.conv.weight': t,
          'roi_head.bbox_head.fc_cls.weight': t,            # Mask R-CNN: no stage index
          'roi_head.mask_head.convs.0.conv.weight': t,
          'roi_head.bbox_head.2.fc_reg.bias': t,            # cascade: indexed already
          'roi_head.semantic_head.conv_logits.weight': t,
          'data_preprocessor.mean': t}
    out, unmapped = convert_mmdet(sd)
    assert list(out) == ['backbone.layer1.0.bn1.num_batches_tracked',
                         'neck.fpn_convs.0.conv.weight', 'roi_head.bbox_head.0.fc_cls.weight',
                         'roi_head.mask_head.0.convs.0.conv.weight',
                         'roi_head.bbox_head.2.fc_reg.bias',
                         'roi_head.semantic_head.conv_logits.weight']
    assert unmapped == ['data_preprocessor.mean']


def test_align_report_names_every_problem():
    from cascade_seg.utils import align_to_model
    model_sd = {'a.weight': torch.zeros(2, 3), 'b.weight': torch.zeros(4),
                'c.running_mean': torch.zeros(4)}
    ckpt = {'a.weight': torch.zeros(3, 2), 'c.running_mean': torch.zeros(4),
            'c.num_batches_tracked': torch.tensor(1), 'extra.bias': torch.zeros(1)}
    sd, report = align_to_model(ckpt, model_sd, unmapped=['src.key'])
    assert 'c.num_batches_tracked' not in sd and report.dropped == ['c.num_batches_tracked']
    assert report.missing == ['b.weight'] and report.unexpected == ['extra.bias']
    assert report.mismatched == [('a.weight', (3, 2), (2, 3))] and not report.ok
    text = str(report)
    for key in ('src.key', 'b.weight', 'extra.bias', 'a.weight: checkpoint (3, 2) vs model (2, 3)'):
        assert key in text
