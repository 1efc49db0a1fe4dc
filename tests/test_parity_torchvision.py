"""Numerical parity with torchvision's ``maskrcnn_resnet50_fpn`` on converted weights.

A seeded torchvision model with random weights and random BatchNorm statistics is converted
with ``convert_torchvision`` and loaded into ``mask-rcnn_r50_fpn_torchvision.py``; both run on
the same image, at a size torchvision's transform keeps (no resize, no padding), and must
agree stage by stage: FPN features, proposals, box head outputs, final detections and masks.
"""
import importlib.util
import os.path as osp

import pytest
import torch
import torchvision

from cascade_seg.models.task_utils import boxes_to_rois
from cascade_seg.structures import DetDataSample
from cascade_seg.utils import (COCO80_CATEGORY_IDS, convert_torchvision, select_classes,
                               torchvision_to_mmdet)
from parity_utils import (REPO, assert_same_detections, assert_tensor_close, build_from_config,
                          capture, load_converted, pre_nms_detections, randomize_norms,
                          record_head_calls, unpaired)

pytestmark = [pytest.mark.slow, pytest.mark.parity]

CONFIG = 'configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py'
H, W = 320, 384     # multiples of 64: torchvision derives anchor strides by integer division
TENSOR_REL = 5e-4   # max abs error / max |reference|: float32 summation order through ResNet-50


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=H, max_size=W)
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)  # RGB
    image = img.float() / 255
    randomize_norms(tv, [image], seed=2)
    with torch.no_grad():
        # Random init gives near-uniform class scores (about 1/91): make the classifier
        # confident enough that the real 0.05 score threshold keeps some detections.
        tv.roi_heads.box_predictor.cls_score.weight.mul_(15.0)
    tv.eval()

    model = build_from_config(CONFIG)
    sd, unmapped = convert_torchvision(tv.state_dict())
    assert not unmapped
    load_converted(model, sd, unmapped)
    data = model.data_preprocessor(
        dict(inputs=[img.flip(0)],  # ours reads BGR like cv2
             data_samples=[DetDataSample(metainfo=dict(
                 img_shape=(H, W), ori_shape=(H, W), scale_factor=(1.0, 1.0)))]), False)
    return tv, model, image, data


def test_key_mapping_covers_both_torchvision_namings():
    old = {'backbone.fpn.inner_blocks.0.weight': torch.zeros(1),
           'rpn.head.conv.weight': torch.zeros(1),
           'roi_heads.mask_head.mask_fcn1.weight': torch.zeros(1)}
    new = {'backbone.fpn.inner_blocks.0.0.weight': torch.zeros(1),
           'rpn.head.conv.0.0.weight': torch.zeros(1),
           'roi_heads.mask_head.0.0.weight': torch.zeros(1)}
    assert list(torchvision_to_mmdet(old)[0]) == list(torchvision_to_mmdet(new)[0]) == [
        'neck.lateral_convs.0.conv.weight', 'rpn_head.rpn_conv.weight',
        'roi_head.mask_head.convs.0.conv.weight']
    sd, unmapped = torchvision_to_mmdet({
        'roi_heads.box_predictor.cls_score.weight': torch.arange(91.)[:, None],
        'roi_heads.box_predictor.bbox_pred.bias': torch.arange(364.),
        'roi_heads.mask_predictor.mask_fcn_logits.bias': torch.arange(91.),
        'roi_heads.something_else': torch.zeros(1)})
    assert sd['roi_head.bbox_head.fc_cls.weight'][-1, 0] == 0          # background last
    assert sd['roi_head.bbox_head.fc_cls.weight'][0, 0] == 1           # class 1 -> label 0
    assert sd['roi_head.bbox_head.fc_reg.bias'][0] == 4                # background box dropped
    assert sd['roi_head.mask_head.conv_logits.bias'][0] == 1           # background mask dropped
    assert unmapped == ['roi_heads.something_else']


@torch.no_grad()
def test_torchvision_parity(setup):
    """One forward of each model; intermediate results are captured on the way."""
    tv, model, image, data = setup
    inputs, samples = data['inputs'], data['data_samples']
    tv_feats, tv_props, tv_box, feats, props = [], [], [], [], []
    calls, remove = record_head_calls(model)
    undo = [remove, capture(tv.rpn, 'filter_proposals', tv_props),
            capture(model.rpn_head, 'predict', props)]
    undo += [h.remove for h in (
        tv.backbone.register_forward_hook(lambda m, i, o: tv_feats.append(list(o.values()))),
        tv.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: tv_box.append(o)),
        model.neck.register_forward_hook(lambda m, i, o: feats.append(o)))]
    try:
        tv_out = tv([image])[0]
        ours = model.predict(inputs, samples)[0].pred_instances
    finally:
        for f in undo:
            f()

    # preprocessing: same normalised tensor (ImageNet mean/std on the 0..255 scale)
    tv_images, _ = tv.transform([image])
    assert tuple(tv_images.tensors.shape[-2:]) == (H, W)  # no resize, no padding
    assert_tensor_close('normalised input', inputs, tv_images.tensors, 1e-5)
    # FPN features P2..P6
    for lvl, (f, rf) in enumerate(zip(feats[0], tv_feats[0])):
        assert_tensor_close(f'P{lvl + 2}', f, rf, TENSOR_REL)
    # proposals, paired regardless of order; the proposal cut and NMS may split near-ties
    tv_boxes, tv_scores = tv_props[0][0][0], tv_props[0][1][0]
    rpn_cfg, rcnn_cfg = model.test_cfg['rpn'], model.test_cfg['rcnn']
    roi_pairs = assert_same_detections(
        props[0][0].to_dict(), dict(bboxes=tv_boxes, scores=tv_scores,
                                    labels=torch.zeros(len(tv_boxes), dtype=torch.long)),
        min_mask_iou=None, max_num=rpn_cfg['max_per_img'],
        nms_iou=rpn_cfg['nms']['iou_threshold'], class_agnostic_nms=True)
    # box head on torchvision's proposals (float noise in ours would be amplified by the
    # sharpened classifier), torchvision's class layout converted to ours
    cls, reg, _ = model.roi_head.bbox_forward(0, feats[0], boxes_to_rois([tv_boxes]))
    tv_cls, tv_reg = tv_box[0]
    assert_tensor_close('box cls_score', cls, torch.cat([tv_cls[:, 1:], tv_cls[:, :1]], 1),
                        TENSOR_REL)
    assert_tensor_close('box bbox_pred', reg, tv_reg[:, 4:], TENSOR_REL)
    assert len(calls) == 2 and [c['kind'] for c in calls] == ['bbox', 'mask']
    # detections and masks (ours = torchvision label - 1)
    ref = dict(bboxes=tv_out['boxes'], scores=tv_out['scores'], labels=tv_out['labels'],
               masks=tv_out['masks'][:, 0] > 0.5)
    assert len(ref['scores']) >= 20, 'test setup: too few detections to compare'
    assert ref['masks'].flatten(1).any(1).float().mean() > 0.5, 'test setup: empty masks'
    # a proposal only one side has (a near-tie flip) may add or suppress detections: each
    # such difference must be traced to it
    extra_ours, extra_ref = (
        pre_nms_detections(model.roi_head, feats[0], boxes[unpaired(roi_pairs, len(boxes), side)],
                           samples[0])
        for boxes, side in ((props[0][0].bboxes, 1), (tv_boxes, 0)))
    extra_ref['labels'] += 1  # torchvision's labels
    assert_same_detections(ours.to_dict(), ref, label_offset=1, max_num=rcnn_cfg['max_per_img'],
                           score_thr=rcnn_cfg['score_thr'],
                           nms_iou=rcnn_cfg['nms']['iou_threshold'], extra_ours=extra_ours,
                           extra_ref=extra_ref)


@torch.no_grad()
def test_torchvision_parity_can_fail(setup):
    """The same weights with MMDetection's aligned RoIAlign part from torchvision at the box
    head by far more than the tolerance."""
    tv, model, image, data = setup
    wrong = build_from_config(CONFIG, {'model.roi_head.bbox_roi_extractor.roi_layer.aligned': True})
    wrong.load_state_dict(model.state_dict())
    tv_props, tv_box = [], []
    undo = [capture(tv.rpn, 'filter_proposals', tv_props), tv.roi_heads.box_predictor
            .register_forward_hook(lambda m, i, o: tv_box.append(o)).remove]
    try:
        tv([image])
    finally:
        for f in undo:
            f()
    feats = wrong.extract_feat(data['inputs'])
    cls, _, _ = wrong.roi_head.bbox_forward(0, feats, boxes_to_rois([tv_props[0][0][0]]))
    with pytest.raises(AssertionError, match='box cls_score'):
        assert_tensor_close('box cls_score', cls,
                            torch.cat([tv_box[0][0][:, 1:], tv_box[0][0][:, :1]], 1), TENSOR_REL)


def test_select_coco80_classes():
    sd, _ = convert_torchvision({
        'roi_heads.box_predictor.cls_score.bias': torch.arange(91.),
        'roi_heads.box_predictor.bbox_pred.bias': torch.arange(364.),
        'roi_heads.mask_predictor.mask_fcn_logits.bias': torch.arange(91.)})
    out = select_classes(sd, [i - 1 for i in COCO80_CATEGORY_IDS])
    cls = out['roi_head.bbox_head.0.fc_cls.bias']
    assert cls.shape == (81,) and cls[-1] == 0 and cls[:-1].tolist() == list(COCO80_CATEGORY_IDS)
    reg = out['roi_head.bbox_head.0.fc_reg.bias'].view(80, 4)
    assert reg[11].tolist() == [4 * 13 + k for k in range(4)]   # label 11 = COCO id 13
    assert out['roi_head.mask_head.0.conv_logits.bias'].tolist() == list(COCO80_CATEGORY_IDS)


def test_convert_checkpoint_cli(setup, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'convert_checkpoint', osp.join(REPO, 'tools', 'convert_checkpoint.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tv, model, _, _ = setup
    src, dst = tmp_path / 'tv.pth', tmp_path / 'out.pth'
    torch.save(tv.state_dict(), src)
    config = osp.join(REPO, CONFIG)
    assert tool.main(['--from', 'torchvision', str(src), str(dst), '--config', config]) == 0
    assert 'dropped' in capsys.readouterr().out   # BatchNorm counters: FrozenBN has none
    sd = torch.load(dst, weights_only=True)['state_dict']
    ours = model.state_dict()
    assert sd.keys() == ours.keys() and all(torch.equal(sd[k], ours[k]) for k in sd)
    # a wrong target (80 classes) is reported with the mismatched shapes, exit status 1
    assert tool.main(['--from', 'torchvision', str(src), str(dst), '--config', config,
                 '--cfg-options', 'model.roi_head.num_classes=80']) == 1
    assert 'shape mismatch' in capsys.readouterr().out
