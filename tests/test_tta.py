"""Test-time augmentation: DetTTAModel + TestTimeAug on the small configs.

The main check: flip TTA equals a prediction flipped and merged by hand with the detector's
public API (predict the image and its mirror, mirror the second's boxes back, NMS, then the
mask branch on the merged boxes in both, the second's pasted masks mirrored back, averaged).
"""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from torchvision.ops import batched_nms

from cascade_seg.engine.runner_utils import default_tta_pipeline, load_config
from cascade_seg.models.tta import DetTTAModel, merge_detections
from cascade_seg.registry import MODELS, TRANSFORMS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SIZE = 64
SMALL = {'model.test_cfg.rpn.max_per_img': 60, 'model.test_cfg.rpn.nms_pre': 200}


def build(rel, **rcnn):
    options = dict(SMALL)
    options.update({f'model.test_cfg.rcnn.{k}': v for k, v in rcnn.items()})
    cfg = load_config(osp.join(REPO, 'configs', rel), options)
    init_default_scope('cascade_seg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    return model.eval(), cfg


def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    img[10:40, 12:30] = (200, 40, 40)  # something box-like
    return img


def sample(flip=False, scale=1.0, flip_indices=None):
    h = w = int(round(SIZE * scale))
    meta = dict(img_id=0, ori_shape=(SIZE, SIZE), img_shape=(h, w), scale_factor=(scale, scale),
                flip=flip, flip_direction='horizontal' if flip else None, pad_shape=(h, w))
    if flip_indices is not None:
        meta['flip_indices'] = flip_indices
    return DetDataSample(metainfo=meta)


def inputs(img, flip=False, scale=1.0):
    import cv2
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def batch(img, flip=False, scale=1.0, **kw):
    return dict(inputs=[inputs(img, flip, scale)], data_samples=[sample(flip, scale, **kw)])


def tta_data(*batches):
    return dict(inputs=[b['inputs'] for b in batches],
                data_samples=[b['data_samples'] for b in batches])


def unflip(boxes, w=SIZE):
    out = boxes.clone()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return out


@pytest.mark.parametrize('rel', ['mask_rcnn/mask-rcnn_r18_fpn_synthetic.py',
                                 'htc/htc_r18_fpn_synthetic.py'])
def test_flip_tta_equals_a_manually_flipped_and_merged_prediction(rel):
    model, _ = build(rel, score_thr=0.05, max_per_img=15, mask_thr_binary=-1.0)  # float masks
    tta = DetTTAModel(model, tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=15))
    img = image()
    with torch.no_grad():
        merged = tta.test_step(tta_data(batch(img), batch(img, flip=True)))[0].pred_instances

        # by hand: the image and its mirror, through the detector's own test step
        a = model.test_step(batch(img))[0].pred_instances
        b = model.test_step(batch(img, flip=True))[0].pred_instances
        boxes = torch.cat([a.bboxes, unflip(b.bboxes)])
        scores, labels = torch.cat([a.scores, b.scores]), torch.cat([a.labels, b.labels])
        keep = batched_nms(boxes, scores, labels, 0.5)[:15]
        assert len(keep) > 3  # random weights still detect something
        torch.testing.assert_close(merged.bboxes, boxes[keep])
        torch.testing.assert_close(merged.scores, scores[keep])
        assert torch.equal(merged.labels, labels[keep])

        # masks: the mask branch on the merged boxes in both copies, mirrored back, averaged
        dets = InstanceData(bboxes=boxes[keep], scores=scores[keep], labels=labels[keep])
        probs = []
        for flip in (False, True):
            data = model.data_preprocessor(batch(img, flip=flip), False)
            x = model.extract_feat(data['inputs'])
            given = InstanceData(bboxes=unflip(dets.bboxes) if flip else dets.bboxes,
                                 scores=dets.scores, labels=dets.labels)
            out = model.roi_head.predict_with_given_boxes(x, [given], data['data_samples'])[0]
            probs.append(out.masks.flip(-1) if flip else out.masks)
        expected = (probs[0] + probs[1]) / 2
    assert merged.masks.shape == (len(keep), SIZE, SIZE) and merged.masks.dtype == torch.float32
    torch.testing.assert_close(merged.masks, expected, atol=1e-5, rtol=0)
    assert float(expected.max()) > 0.1  # the masks are not empty


def test_one_copy_is_the_plain_prediction_and_scales_map_back():
    model, _ = build('cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py',
                     score_thr=0.05, max_per_img=10, mask_thr_binary=-1.0)
    tta = DetTTAModel(model, tta_cfg=dict(max_per_img=10))
    img = image()
    with torch.no_grad():
        plain = model.test_step(batch(img))[0].pred_instances
        one = tta.test_step(tta_data(batch(img)))[0].pred_instances
        torch.testing.assert_close(one.bboxes, plain.bboxes)
        torch.testing.assert_close(one.masks, plain.masks, atol=1e-5, rtol=0)
        # a 1.5x copy: its detections come back in the original image
        big = tta.test_step(tta_data(batch(img, scale=1.5)))[0].pred_instances
    assert big.masks.shape[-2:] == (SIZE, SIZE)
    assert float(big.bboxes.max()) <= SIZE + 1e-3


def test_keypoints_come_back_unflipped_and_swapped():
    model, _ = build('keypoint_rcnn/keypoint-rcnn_r18_fpn_synthetic.py', score_thr=0.05,
                     max_per_img=5)
    swap = [1, 0, 3, 2]  # top <-> bottom is not a left/right pair, but any permutation works
    tta = DetTTAModel(model, tta_cfg=dict(max_per_img=5))
    img = image()
    with torch.no_grad():
        got = tta.test_step(tta_data(batch(img, flip=True, flip_indices=swap)))[0].pred_instances
        b = model.test_step(batch(img, flip=True))[0].pred_instances
        keep = batched_nms(unflip(b.bboxes), b.scores, b.labels, 0.5)[:5]
        data = model.data_preprocessor(batch(img, flip=True), False)
        x = model.extract_feat(data['inputs'])
        given = InstanceData(bboxes=b.bboxes[keep], scores=b.scores[keep], labels=b.labels[keep])
        out = model.roi_head.predict_with_given_boxes(x, [given], data['data_samples'])[0]
    xy = out.keypoints.clone()
    xy[..., 0] = SIZE - xy[..., 0]
    torch.testing.assert_close(got.keypoints, xy[:, swap])
    torch.testing.assert_close(got.keypoint_scores, out.keypoint_scores[:, swap])


@pytest.mark.parametrize('rel', ['centermask/centermask_r18_fpn_synthetic.py',
                                 'centermask/fcos_r18_fpn_synthetic.py'])
def test_every_detector_runs_multi_scale_flip_tta(rel):
    model, cfg = build(rel) if 'fcos' in rel else build(rel, mask_thr_binary=0.5)
    model.test_cfg.update(score_thr=0.0)  # FCOS: its test_cfg; CenterMask's rcnn ignores it
    if 'centermask_r18' in rel:
        model.proposal_generator.test_cfg.update(score_thr=0.0)
    tta = DetTTAModel(model, tta_cfg=dict(max_per_img=8, merge='weighted'))
    img = image()
    augs = [batch(img, flip=f, scale=s) for s in (1.0, 1.25) for f in (False, True)]
    with torch.no_grad():
        pred = tta.test_step(tta_data(*augs))[0].pred_instances
    assert 0 < len(pred) <= 8 and float(pred.bboxes.max()) <= SIZE + 1e-3
    if 'centermask_r18' in rel:
        assert pred.masks.shape == (len(pred), SIZE, SIZE) and pred.masks.dtype == torch.bool
        assert pred.mask_scores.shape == pred.scores.shape


def test_weighted_merge_averages_the_suppressed_boxes():
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.3, 0.5])
    labels = torch.tensor([0, 0, 0])
    b, s, _ = merge_detections(boxes, scores, labels, 0.5, 100, 'nms')
    assert torch.equal(b, boxes[[0, 2]]) and torch.equal(s, scores[[0, 2]])
    b, s, _ = merge_detections(boxes, scores, labels, 0.5, 100, 'weighted')
    torch.testing.assert_close(b[0], (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2)
    torch.testing.assert_close(b[1], boxes[2])


def test_test_time_aug_transform_and_default_pipeline():
    init_default_scope('cascade_seg')
    cfg = load_config(osp.join(REPO, 'configs/mask_rcnn/mask-rcnn_r18_fpn_synthetic.py'))
    steps = default_tta_pipeline(cfg.test_dataloader.dataset.pipeline)
    assert [t['type'] for t in steps] == ['LoadImageFromFile', 'TestTimeAug']
    aug = TRANSFORMS.build(steps[1])
    img = image()
    out = aug(dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2], img_id=3,
                   img_path='x.png', instances=[]))
    assert len(out['inputs']) == 2  # no flip, flip
    metas = [s.metainfo for s in out['data_samples']]
    assert [m['flip'] for m in metas] == [False, True] and metas[0]['img_shape'] == (128, 128)
    assert torch.equal(out['inputs'][1], out['inputs'][0].flip(-1))
