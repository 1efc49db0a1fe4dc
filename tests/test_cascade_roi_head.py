"""CascadeRoIHead: stage configs, training flow, HTC switches, inference and edge cases.

Tiny setting: 2 images 64x64, 3 classes, 32-channel features, a few RoIs.
"""
import copy

import pytest
import torch
from mmengine.structures import InstanceData, PixelData

import cascade_seg.models  # noqa: F401  (registers everything)
from cascade_seg.models.roi_heads.bbox_heads import postprocess_detections
from cascade_seg.models.roi_heads.stage_config import merge_cfg, stage_cfgs
from cascade_seg.models.task_utils import boxes_to_rois
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

torch.set_num_threads(1)
C, NC = 32, 3
GT_BOXES = torch.tensor([[4., 4, 28, 30], [24, 30, 56, 60]])


def ext(size, strides=(4, 8)):
    return dict(type='SingleRoIExtractor', out_channels=C, featmap_strides=list(strides),
                roi_layer=dict(type='RoIAlign', output_size=size, sampling_ratio=0))


def train_cfg(num=64, pos_fraction=0.5):
    assigner = dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                    match_low_quality=False)
    return dict(assigner=assigner, mask_size=28, pos_weight=-1,
                sampler=dict(type='RandomSampler', num=num, pos_fraction=pos_fraction),
                stage_overrides=dict(
                    s1=dict(assigner=dict(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6)),
                    s2=dict(assigner=dict(pos_iou_thr=0.7, neg_iou_thr=0.7, min_pos_iou=0.7))))


TEST_CFG = dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=8,
                mask_thr_binary=0.5)


def make_head(num_stages=3, with_mask=True, **kw):
    cfg = dict(type='CascadeRoIHead', num_stages=num_stages,
               stage_loss_weights=[1.0, 0.5, 0.25][:num_stages],
               bbox_roi_extractor=ext(7),
               bbox_head=dict(type='Shared2FCBBoxHead', in_channels=C, fc_out_channels=32,
                              num_classes=NC, reg_class_agnostic=num_stages > 1),
               train_cfg=train_cfg() if num_stages == 3 else dict(
                   {k: v for k, v in train_cfg().items() if k != 'stage_overrides'}),
               test_cfg=TEST_CFG)
    if with_mask:
        cfg.update(mask_roi_extractor=ext(14),
                   mask_head=dict(type='FCNMaskHead', num_convs=1, in_channels=C,
                                  conv_out_channels=C, num_classes=NC))
    cfg = merge_cfg(cfg, kw)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def semantic_kw():
    return dict(semantic_roi_extractor=ext(14, strides=[8]),
                semantic_head=dict(type='FusedSemanticHead', num_ins=2, fusion_level=1, num_convs=1,
                                   in_channels=C, conv_out_channels=C, num_classes=5))


def make_batch(num_gts=(2, 2), num_props=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(2, C, 16, 16, generator=g), torch.randn(2, C, 8, 8, generator=g)]
    samples, props = [], []
    for i, (ng, npr) in enumerate(zip(num_gts, num_props)):
        s = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(32, 48),
                                        scale_factor=(64 / 48, 2.0)))
        boxes = GT_BOXES[:ng]
        masks = torch.zeros(ng, 64, 64, dtype=torch.bool)
        for j, b in enumerate(boxes.long()):
            masks[j, b[1]:b[3], b[0]:b[2]] = True
        s.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 2])[:ng], masks=masks)
        s.gt_sem_seg = PixelData(sem_seg=torch.randint(0, 5, (1, 64, 64), generator=g))
        samples.append(s)
        jitter = GT_BOXES.repeat(npr, 1)[:npr] + torch.randn(npr, 4, generator=g) * 3
        props.append(InstanceData(bboxes=jitter.clamp(0, 63)))
    return x, props, samples


def spy_sampling(head):
    calls = []
    orig = head._assign_and_sample

    def spy(stage, proposals, gts, ignores):
        res = orig(stage, proposals, gts, ignores)
        calls.append((stage, [len(p) for p in proposals], res))
        return res
    head._assign_and_sample = spy
    return calls


def mask_heads_with_grad(head):
    return {k: any(p.grad is not None for p in m.parameters()) for k, m in head.mask_head.items()}


def total(losses):
    return sum(v for k, v in losses.items() if 'loss' in k)


# ----------------------------------------------------------------- config schema
def test_merge_and_stage_overrides():
    base = dict(a=1, b=dict(c=2, d=dict(e=3)), f=[1, 2])
    merged = merge_cfg(base, dict(b=dict(d=dict(e=4)), f=[3]))
    assert merged == dict(a=1, b=dict(c=2, d=dict(e=4)), f=[3]) and base['b']['d']['e'] == 3
    assert merge_cfg(base, dict(b=dict(_delete_=True, z=0)))['b'] == dict(z=0)
    cfgs = stage_cfgs(dict(x=dict(y=1, z=2)), dict(s1=dict(x=dict(z=5))), 2)
    assert cfgs == [dict(x=dict(y=1, z=2)), dict(x=dict(y=1, z=5))]
    with pytest.raises(KeyError, match='s3'):
        stage_cfgs(dict(x=1), dict(s3=dict(x=2)), 2)
    with pytest.raises(KeyError, match='bbox_hed'):
        make_head(stage_overrides=dict(s1=dict(bbox_hed=dict(num_classes=2))))


def test_stage_overrides_build_per_stage_modules():
    head = make_head(stage_overrides=dict(
        s1=dict(bbox_head=dict(bbox_coder=dict(target_stds=[0.05, 0.05, 0.1, 0.1]))),
        s2=dict(bbox_head=dict(loss_bbox=dict(beta=0.5)))))
    stds = [h.bbox_coder.stds for h in head.bbox_head]
    assert stds == [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.1, 0.1, 0.2, 0.2)]
    # the partial override merged onto the class defaults: type and means kept
    assert head.bbox_head[1].bbox_coder.means == (0., 0., 0., 0.)
    assert [h.loss_bbox.beta for h in head.bbox_head] == [1.0, 1.0, 0.5]
    # one extractor module per stage: a parametric extractor is never shared by accident ...
    assert len(head.bbox_roi_extractor) == 3 and len(head.mask_roi_extractor) == 3
    assert len({id(head.extractor('bbox', t)) for t in range(3)}) == 3
    # ... unless sharing is asked for
    shared = make_head(share_stage_extractors=True)
    assert len(shared.bbox_roi_extractor) == 1 and len(shared.mask_roi_extractor) == 1
    assert len({id(shared.extractor('mask', t)) for t in range(3)}) == 1
    with pytest.raises(ValueError, match='same extractor config'):
        make_head(share_stage_extractors=True,
                  stage_overrides=dict(s1=dict(mask_roi_extractor=dict(finest_scale=28))))


def test_per_stage_iou_thresholds_are_used():
    head = make_head()
    assert [a.pos_iou_thr for a in head.assigners] == [0.5, 0.6, 0.7]
    assert [a.min_pos_iou for a in head.assigners] == [0.5, 0.6, 0.7]
    gt = torch.tensor([[0., 0, 20, 20]])
    prop = torch.tensor([[0., 0, 20, 13]])              # IoU 0.65 with the GT
    gt_inds = [head.assigners[t].assign(prop, gt, torch.tensor([1])).gt_inds.item()
               for t in range(3)]
    assert gt_inds == [1, 1, 0]                         # positive at 0.5 / 0.6, negative at 0.7


# ----------------------------------------------------------------- training flow
def test_loss_keys_and_gt_proposals_dropped_after_refinement():
    head = make_head()
    calls = spy_sampling(head)
    x, props, samples = make_batch()
    losses = head.loss(x, props, samples)
    assert set(losses) == {f's{t}.{k}' for t in range(3)
                           for k in ('loss_cls', 'acc', 'loss_bbox', 'loss_mask')}
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] == [8, 8]
    for (_, _, prev), (_, lens, _) in zip(calls[:-1], calls[1:]):
        for res, n in zip(prev, lens):
            assert res.pos_is_gt.sum() == 2             # both GTs were sampled as proposals ...
            assert n == len(res.priors) - 2             # ... and are not the next stage's input
    total(losses).backward()
    assert all(p.grad is not None for p in head.bbox_head.parameters())


def test_stage_loss_weights_scale_losses_not_accuracy():
    ref = make_head(stage_loss_weights=[1.0, 1.0, 1.0])
    weighted = make_head(stage_loss_weights=[1.0, 0.5, 0.25])
    weighted.load_state_dict(ref.state_dict())
    batch = make_batch()
    torch.manual_seed(1)
    a = ref.loss(*batch)
    torch.manual_seed(1)
    b = weighted.loss(*batch)
    for t, w in enumerate([1.0, 0.5, 0.25]):
        for k in ('loss_cls', 'loss_bbox', 'loss_mask'):
            assert torch.allclose(b[f's{t}.{k}'], a[f's{t}.{k}'] * w)
        assert torch.equal(b[f's{t}.acc'], a[f's{t}.acc'])


@pytest.mark.parametrize('mask_stages,heads,loss_stages', [
    ('all', ['0', '1', '2'], [0, 1, 2]), ('first', ['0'], [0]), ('last', ['2'], [2]),
    ([1], ['1'], [1]), ('shared', ['0'], [0, 1, 2])])
def test_mask_strategies_build_and_train_the_right_heads(mask_stages, heads, loss_stages):
    head = make_head(mask_stages=mask_stages)
    assert sorted(head.mask_head.keys()) == heads
    losses = head.loss(*make_batch())
    assert sorted(k for k in losses if 'loss_mask' in k) == [f's{t}.loss_mask' for t in loss_stages]
    losses[f's{loss_stages[-1]}.loss_mask'].backward()
    for key, m in head.mask_head.items():
        grads = [p.grad for p in m.parameters()]
        trained = key == heads[-1] or mask_stages == 'shared'
        assert all(g is not None and g.abs().sum() > 0 for g in grads) if trained \
            else all(g is None for g in grads)


def test_each_stage_loss_reaches_only_its_mask_head_without_info_flow():
    head = make_head()
    head.loss(*make_batch())['s1.loss_mask'].backward()
    has_grad = mask_heads_with_grad(head)
    assert has_grad == {'0': False, '1': True, '2': False}


def test_info_flow_chains_earlier_mask_heads():
    head = make_head(mask_info_flow=True)
    assert [m.with_conv_res for m in head.mask_head.values()] == [False, True, True]
    head.loss(*make_batch())['s1.loss_mask'].backward()
    has_grad = mask_heads_with_grad(head)
    assert has_grad == {'0': True, '1': True, '2': False}

    feats = torch.randn(3, C, 14, 14)
    for info_flow, changes in ((True, True), (False, False)):
        head = make_head(mask_info_flow=info_flow).eval()
        with torch.no_grad():
            before = head.mask_head.logits(1, feats)
            head.mask_head['0'].convs[0].conv.weight.mul_(2.0)
            after = head.mask_head.logits(1, feats)
        assert (not torch.allclose(before, after)) == changes
    with pytest.raises(ValueError, match='shared'):
        make_head(mask_stages='shared', mask_info_flow=True)


def test_interleaved_resamples_refined_boxes_for_the_mask_branch():
    head = make_head(interleaved=True)
    calls = spy_sampling(head)
    head.loss(*make_batch())
    assert [c[0] for c in calls] == [0, 0, 1, 1, 2, 2]
    # the mask branch of stage t sees the same refined boxes as the box branch of stage t + 1
    assert calls[1][1] == calls[2][1]
    assert calls[1][1] != [len(r.priors) for r in calls[0][2]]
    plain = make_head(interleaved=False)
    calls = spy_sampling(plain)
    plain.loss(*make_batch())
    assert [c[0] for c in calls] == [0, 1, 2]


def test_semantic_branch_only_when_configured():
    x, props, samples = make_batch()
    assert 'loss_semantic_seg' not in make_head().loss(x, props, samples)
    head = make_head(**semantic_kw())
    losses = head.loss(x, props, samples)
    assert losses['loss_semantic_seg'] > 0
    losses['s0.loss_cls'].backward()                   # semantic features feed the box branch
    assert head.semantic_head.conv_embedding.conv.weight.grad.abs().sum() > 0
    box_only = make_head(**semantic_kw(), semantic_fusion=('mask',))
    box_only.loss(x, props, samples)['s0.loss_cls'].backward()
    assert box_only.semantic_head.conv_embedding.conv.weight.grad is None


# ----------------------------------------------------------------- inference
def _boxes_and_labels():
    boxes = [GT_BOXES.clone(), GT_BOXES[:1].clone()]
    return boxes, boxes_to_rois(boxes), torch.tensor([0, 2, 1])


def mask_probs(head, x, rois, labels):
    """The mask branch's test-time probabilities of ``rois``."""
    feats, _ = head.roi_features(x)
    return head.mask_head.predict(lambda t: feats.pool(head.extractor('mask', t), rois, 'mask'),
                                  rois, labels, {})


def test_mask_average_all_vs_last():
    x, _, _ = make_batch()
    _, rois, labels = _boxes_and_labels()
    for info_flow in (False, True):
        head_all = make_head(mask_info_flow=info_flow).eval()
        head_last = make_head(mask_info_flow=info_flow, mask_average='last').eval()
        head_last.load_state_dict(head_all.state_dict())
        with torch.no_grad():
            feats = head_all.extractor('mask', 0)(x, rois)
            per_stage, res = [], None
            for k in ('0', '1', '2'):
                m = head_all.mask_head[k]
                logits, res = m(feats, res if info_flow else None, return_feat=True)
                per_stage.append(m.mask_probs(logits, labels))
            assert torch.allclose(mask_probs(head_all, x, rois, labels), sum(per_stage) / 3)
            assert torch.allclose(mask_probs(head_last, x, rois, labels), per_stage[-1])


def test_score_average_mean_vs_last():
    x, _, samples = make_batch()
    boxes, rois, _ = _boxes_and_labels()
    head_mean = make_head(with_mask=False).eval()
    with torch.no_grad():
        for h in head_mean.bbox_head[:2]:   # no regression: every stage sees the same RoIs
            h.fc_reg.weight.zero_()
            h.fc_reg.bias.zero_()
    head_last = make_head(with_mask=False, score_average='last').eval()
    head_last.load_state_dict(head_mean.state_dict())
    with torch.no_grad():
        feats = head_mean.extractor('bbox', 0)(x, rois)
        logits = [h(feats)[0] for h in head_mean.bbox_head]
        shapes = [(64, 64)] * 2
        mean, _, out_rois = head_mean._refine_rois(x, rois, [2, 1], shapes)
        last, _, _ = head_last._refine_rois(x, rois, [2, 1], shapes)
    assert torch.allclose(out_rois, rois)
    assert torch.allclose(mean, sum(logits) / 3) and torch.allclose(last, logits[2])


def test_predict_outputs_and_one_stage_is_mask_rcnn():
    head = make_head(num_stages=1).eval()
    x, props, samples = make_batch()
    with torch.no_grad():
        res = head.predict(x, props, samples)
        # Mask R-CNN by hand: one box head pass, decode, per-class NMS, rescale, masks
        rois = boxes_to_rois([p.bboxes for p in props])
        cls_score, bbox_pred = head.bbox_head[0](head.extractor('bbox', 0)(x, rois))
        coder = head.bbox_head[0].bbox_coder
        r0 = rois[:8]
        boxes = coder.decode(r0[:, 1:].repeat_interleave(NC, 0), bbox_pred[:8].reshape(-1, 4),
                             max_shape=(64, 64)).view(8, -1)
        b, s, l = postprocess_detections(boxes, cls_score[:8].softmax(-1), 0.0, 0.5, 8)
        mask_feats = head.extractor('mask', 0)(x, boxes_to_rois([b]))
        probs = head.mask_head['0'].mask_probs(head.mask_head['0'](mask_feats), l)
    r = res[0]
    assert torch.allclose(r.scores, s) and torch.equal(r.labels, l)
    assert torch.allclose(r.bboxes, b / torch.tensor([64 / 48, 2.0, 64 / 48, 2.0]))
    assert r.masks.dtype == torch.bool and r.masks.shape == (len(b), 32, 48)
    from cascade_seg.models.task_utils import paste_masks
    assert torch.equal(r.masks, paste_masks(probs, r.bboxes, (32, 48), 0.5))
    keys = {'s0.loss_cls', 's0.acc', 's0.loss_bbox', 's0.loss_mask'}
    assert set(head.loss(*make_batch())) == keys


def test_one_stage_loads_unindexed_mmdet_names():
    src, dst = make_head(num_stages=1), make_head(num_stages=1)
    state = {k.replace('bbox_head.0.', 'bbox_head.').replace('mask_head.0.', 'mask_head.'): v
             for k, v in src.state_dict().items()}
    assert 'bbox_head.fc_cls.weight' in state
    dst.load_state_dict(state, strict=True)
    assert torch.equal(dst.bbox_head[0].fc_cls.weight, src.bbox_head[0].fc_cls.weight)
    assert torch.equal(dst.mask_head['0'].conv_logits.weight, src.mask_head['0'].conv_logits.weight)


@pytest.mark.parametrize('share', [False, True])
def test_each_extractor_pools_once_at_test_time(share):
    head = make_head(**semantic_kw(), mask_info_flow=True, share_stage_extractors=share).eval()
    counts = {}
    for task in ('bbox', 'mask'):
        for key, m in getattr(head, f'{task}_roi_extractor').items():
            m.register_forward_hook(lambda *a, k=(task, key): counts.__setitem__(
                k, counts.get(k, 0) + 1))
    x, props, samples = make_batch()
    with torch.no_grad():
        res = head.predict(x, props, samples, rescale=False)
    # the box stages pool their own RoIs; every mask stage pools the same detections, once
    # per extractor module
    if share:
        assert counts == {('bbox', 'shared'): 3, ('mask', 'shared'): 1}
    else:
        assert counts == {(task, str(t)): 1 for task in ('bbox', 'mask') for t in range(3)}
    assert res[0].masks.shape[1:] == (64, 64)          # not rescaled: network input frame
    assert (res[0].bboxes[:, 2:] <= 64).all()


def test_box_only_head_and_torchvision_paste():
    head = make_head(with_mask=False).eval()
    x, props, samples = make_batch()
    with torch.no_grad():
        res = head.predict(x, props, samples)
    assert 'masks' not in res[0] and len(res[0]) > 0
    assert (res[0].bboxes[:, 2] <= 48 + 1e-4).all() and (res[0].bboxes[:, 3] <= 32 + 1e-4).all()
    keys = {k.split('.')[1] for k in head.loss(x, props, samples)}
    assert keys == {'loss_cls', 'acc', 'loss_bbox'}
    tv = make_head(test_cfg=dict(mask_paste='torchvision')).eval()
    with torch.no_grad():
        assert tv.predict(x, props, samples)[1].masks.shape[1:] == (32, 48)


# ----------------------------------------------------------------- edge cases
def test_empty_proposals_and_zero_gt_images():
    head = make_head(**semantic_kw(), interleaved=True, mask_info_flow=True)
    x, props, samples = make_batch(num_gts=(0, 2), num_props=(0, 5))
    losses = head.loss(x, props, samples)
    assert all(torch.isfinite(v).all() for v in losses.values())
    total(losses).backward()
    # no GT and no proposals anywhere: every loss key exists, is zero and backpropagates
    x, props, samples = make_batch(num_gts=(0, 0), num_props=(0, 0))
    losses = make_head().loss(x, props, samples)
    assert len(losses) == 12 and sum(v.detach().sum() for v in losses.values()) == 0
    total(losses).backward()

    head.eval()
    with torch.no_grad():
        res = head.predict(x, props, samples)
        assert [len(r) for r in res] == [0, 0]
        assert res[0].bboxes.shape == (0, 4) and res[0].labels.dtype == torch.long
        assert res[0].masks.shape == (0, 32, 48) and res[0].masks.dtype == torch.bool
        x, props, samples = make_batch(num_props=(0, 4))
        res = head.predict(x, props, samples)
        assert len(res[0]) == 0 and len(res[1]) > 0 and res[0].masks.shape == (0, 32, 48)
        head.test_cfg = dict(TEST_CFG, score_thr=1.0)  # nothing survives the threshold
        res = head.predict(x, props, samples)
        assert [r.masks.shape for r in res] == [(0, 32, 48)] * 2


@pytest.mark.parametrize('mask_head', [
    dict(type='FCNMaskHead', num_convs=1, in_channels=C, conv_out_channels=C, num_classes=NC,
         predictor='softmax'),
    dict(type='MLPMaskHead', in_channels=C, roi_feat_size=14, fc_out_channels=32, num_classes=NC)])
def test_softmax_and_mlp_mask_heads_run_in_the_cascade(mask_head):
    head = make_head(mask_head=dict(_delete_=True, **mask_head))
    losses = head.loss(*make_batch())
    total(losses).backward()
    assert all(losses[f's{t}.loss_mask'] > 0 for t in range(3))
    head.eval()
    x, props, samples = make_batch()
    with torch.no_grad():
        res = head.predict(x, props, samples)
    assert res[0].masks.shape == (len(res[0]), 32, 48) and len(res[0]) > 0


def test_mmdet_style_per_stage_lists_and_train_cfg_list():
    cfg = copy.deepcopy(train_cfg())
    cfg.pop('stage_overrides')
    stages = [merge_cfg(cfg, dict(assigner=dict(pos_iou_thr=p))) for p in (0.5, 0.6, 0.7)]
    head = MODELS.build(dict(
        type='CascadeRoIHead', num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=ext(7), train_cfg=stages,
        bbox_head=[dict(type='Shared2FCBBoxHead', in_channels=C, fc_out_channels=32,
                        num_classes=NC, bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                                                        target_stds=[s, s, 2 * s, 2 * s]))
                   for s in (0.1, 0.05, 0.033)]))
    assert [a.pos_iou_thr for a in head.assigners] == [0.5, 0.6, 0.7]
    assert [h.bbox_coder.stds[0] for h in head.bbox_head] == [0.1, 0.05, 0.033]


# ----------------------------------------------------------------- branches on given boxes
def test_zero_box_stages_train_and_predict_branches_on_given_boxes():
    cfg = dict(type='CascadeRoIHead', num_stages=0, mask_roi_extractor=ext(14),
               mask_head=dict(type='FCNMaskHead', num_convs=1, in_channels=C,
                              conv_out_channels=C, num_classes=NC),
               train_cfg={k: v for k, v in train_cfg().items() if k != 'stage_overrides'},
               test_cfg=TEST_CFG)
    torch.manual_seed(0)
    head = MODELS.build(cfg)
    assert len(head.bbox_head) == 0 and head.branch_names == ['mask']
    x, props, samples = make_batch()
    losses = head.loss(x, props, samples)
    assert set(losses) == {'s0.loss_mask'} and losses['s0.loss_mask'] > 0
    losses['s0.loss_mask'].backward()
    head.eval()
    given = [InstanceData(bboxes=p.bboxes[:3], scores=torch.rand(3), labels=torch.tensor([0, 1, 2]))
             for p in props]
    with torch.no_grad():
        res = head.predict(x, given, samples, rescale=False)
    for r, g in zip(res, given):
        assert torch.equal(r.bboxes, g.bboxes) and torch.equal(r.labels, g.labels)
        assert r.masks.shape == (3, 64, 64) and r.masks.any()


def test_predict_with_given_boxes_matches_predict():
    head = make_head().eval()
    x, props, samples = make_batch()
    with torch.no_grad():
        full = head.predict(x, props, samples)
        boxes = head.predict(x, props, samples, rescale=False)   # network input frame
        again = head.predict_with_given_boxes(x, boxes, samples)
    for a, b in zip(full, again):
        assert torch.allclose(a.bboxes, b.bboxes) and torch.equal(a.masks, b.masks)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.scores, b.scores)


def test_unknown_branch_key_is_named():
    with pytest.raises(TypeError, match="'maks_head'.*mask_head"):
        make_head(maks_head=dict(type='FCNMaskHead'))


def test_num_classes_key_sets_every_class_head():
    head = make_head(num_classes=5)
    assert [h.num_classes for _, h in head.class_heads()] == [5] * 6
    assert [n for n, _ in head.class_heads()][-3:] == ['mask_head.0', 'mask_head.1', 'mask_head.2']
