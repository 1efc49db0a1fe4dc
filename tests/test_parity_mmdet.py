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

from cascade_seg.utils import convert_mmdet

from parity_utils import MMDetDumps, check_parity, mmdet_python_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.parity]

# reference alias -> our parity config
MODELS = {
    'mask_rcnn': 'configs/mask_rcnn/mask-rcnn_r50_fpn_mmdet.py',
    'cascade_mask_rcnn': 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_mmdet.py',
    'htc_wo_sem': 'configs/htc/htc-without-semantic_r50_fpn_mmdet.py',
    'htc': 'configs/htc/htc_r50_fpn_mmdet.py',
}
SIZE = 320


@pytest.fixture(scope='session')
def mmdet_python():
    return mmdet_python_or_skip()


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
