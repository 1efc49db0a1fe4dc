"""Helpers shared by the torchvision and MMDetection parity tests.

Building our model from a config with converted weights, recording what the RoI heads compute,
and comparisons with messages that say where two pipelines part (max abs / rel error, which
detections do not match).
"""
import os
import os.path as osp
import subprocess
import threading

import torch
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ----------------------------------------------------------------------------- model

def build_from_config(config, cfg_options=None):
    """Our detector (eval mode, fp32, CPU) from a config path relative to the repo."""
    import cascade_seg.models  # noqa: F401 - registers the modules
    from cascade_seg.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return MODELS.build(cfg.model).eval()


def load_converted(model, state_dict, unmapped=()):
    """Load a converted state dict, failing with the full key report on any mismatch."""
    from cascade_seg.utils import align_to_model
    sd, report = align_to_model(state_dict, model.state_dict(), unmapped)
    assert report.ok, f'converted checkpoint does not fit the model:\n{report}'
    model.load_state_dict(sd, strict=True)
    return report


def record_head_calls(model):
    """Forward hooks on every box and mask head of ``model.roi_head``: a list that fills with
    ``dict(kind='bbox'|'mask', name, inputs=[shapes], outputs=[tensors])`` in call order.
    Returns ``(calls, remove)``."""
    from cascade_seg.models.roi_heads.bbox_heads import ConvFCBBoxHead
    from cascade_seg.models.roi_heads.mask_heads import FCNMaskHead
    calls, handles = [], []

    def flat(o):
        if torch.is_tensor(o):
            return [o.detach().clone()]
        if isinstance(o, (list, tuple)):
            return [t for x in o for t in flat(x)]
        return []

    for name, mod in model.roi_head.named_modules():
        kind = ('bbox' if isinstance(mod, ConvFCBBoxHead) else
                'mask' if isinstance(mod, FCNMaskHead) else None)
        if kind:
            handles.append(mod.register_forward_hook(
                lambda m, i, o, kind=kind, name=name: calls.append(
                    dict(kind=kind, name=name, inputs=[tuple(t.shape) for t in flat(i)],
                         outputs=flat(o)))))

    def remove():
        for h in handles:
            h.remove()
    return calls, remove


# ----------------------------------------------------------------------------- torchvision

def randomize_norms(model, images, seed):
    """Random BN affine parameters, then running statistics calibrated on ``images``
    (as the MMDetection reference's ``--randomize-norm``): every residual branch matters and
    activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exactly this batch's statistics
        model.train()
        body = model.backbone.body
        body(model.transform(images)[0].tensors)
        model.eval()


def capture(obj, method, store):
    """Wrap ``obj.method`` (on the instance) so that its return values land in ``store``;
    returns the function that undoes it."""
    orig = getattr(obj, method)

    def wrapper(*args, **kwargs):
        store.append(orig(*args, **kwargs))
        return store[-1]
    setattr(obj, method, wrapper)
    return lambda: delattr(obj, method)


# ----------------------------------------------------------------------------- comparisons

def max_errors(a, b):
    """``(max abs error, max abs error / max |b|)`` of two same-shaped tensors."""
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return err, err / max(scale, 1e-12)


def assert_tensor_close(name, ours, ref, rel=1e-4):
    """Same shape and ``max|ours - ref| <= rel * max|ref|`` (scale-aware: random-weight
    activations can be large)."""
    assert tuple(ours.shape) == tuple(ref.shape), \
        f'{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}'
    err, rerr = max_errors(ours, ref)
    assert rerr <= rel, f'{name}: max abs error {err:.3g} ({rerr:.3g} of max |ref|) > {rel}'


def mask_iou(a, b):
    """IoU of two bool masks ``(N, H, W)`` pooled over all instances and per instance."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    per = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    pooled = (inter.sum() / union.sum()).item() if union.sum() > 0 else 1.0
    return pooled, per


def match_detections(ours, ref, box_rtol=1e-3, score_atol=1e-4):
    """Pair each reference detection with one of ours of the same label, score within
    ``score_atol`` and box within ``box_rtol`` (relative to the box size, at least 1e-3 px).

    Order-free, so near-equal scores sorted differently do not matter. ``ours``/``ref``: dicts
    of ``bboxes, scores, labels``. Returns ``(pairs (ref_i, our_j), unmatched ref indices,
    unmatched indices of ours)``.
    """
    ob, os_, ol = ours['bboxes'].double(), ours['scores'].double(), ours['labels']
    used = torch.zeros(len(os_), dtype=torch.bool)
    pairs, unmatched = [], []
    for i in torch.argsort(ref['scores'], descending=True).tolist():
        rb = ref['bboxes'][i].double()
        ok = (~used & (ol == ref['labels'][i]) & ((os_ - ref['scores'][i].double()).abs()
              <= score_atol) & ((ob - rb).abs().max(1).values <= _box_tol(rb, box_rtol)))
        cand = torch.nonzero(ok).flatten()
        if cand.numel() == 0:
            unmatched.append(i)
            continue
        j = cand[(os_[cand] - ref['scores'][i].double()).abs().argmin()].item()
        used[j] = True
        pairs.append((i, j))
    return pairs, unmatched, torch.nonzero(~used).flatten().tolist()


def _box_tol(box, box_rtol):
    return box_rtol * torch.maximum((box[2:] - box[:2]).abs().max(), box.abs().max()) + 1e-3


def permutation(pairs, n):
    """Index of our row for each reference row, from ``(ref_i, our_j)`` pairs (-1: unpaired)."""
    perm = torch.full((n,), -1, dtype=torch.long)
    for i, j in pairs:
        perm[i] = j
    return perm


def _pairwise_iou(a, b):
    from torchvision.ops import box_iou
    return box_iou(a.double(), b.double())


def explain_flip(i, own, other, *, score_atol, max_num=None, score_thr=None, nms_iou=None,
                 iou_eps=1e-3, class_agnostic_nms=False, extra_own=None, extra_other=None):
    """Why detection ``i`` of ``own`` (absent from ``other``) may be a near-tie flip, or None.

    Float sums in another order move scores and boxes in their last bits. That changes a
    result only where a decision is on a knife's edge, and each such edge is named here:
    - ``'cut'``: ``other`` was truncated at ``max_num`` and ``i`` scores no higher than
      ``other``'s lowest kept score (+ ``score_atol``): the two sides cut a near-tie apart.
    - ``'score_thr'``: ``i``'s score is within ``score_atol`` of the score threshold.
    - ``'nms'``: a detection of either side, of ``i``'s class (any class with
      ``class_agnostic_nms``) and scoring at least as high (- ``score_atol``), overlaps ``i``
      with an IoU within ``iou_eps`` of ``nms_iou``, or above it with a near-equal score: one
      side suppressed ``i`` and the other did not.
    - ``'traced'``: ``i`` is one of ``extra_own``, the pre-NMS detections of an upstream
      input that only ``own`` has (a flipped proposal), or ``other`` lost it to NMS against one
      of ``extra_other``, those of an input that only ``other`` has.
    A real difference (another coder, other RoI features, other averaging) moves scores and
    boxes far beyond these tolerances and is explained by none of them.
    """
    box, score, label = own['bboxes'][i].double(), own['scores'][i].double(), own['labels'][i]
    n_other = len(other['scores'])
    if max_num is not None and n_other >= max_num and \
            score <= other['scores'].double().min() + score_atol:
        return 'cut'
    if score_thr is not None and (score - score_thr).abs() <= score_atol:
        return 'score_thr'
    if nms_iou is not None:
        for side in (own, other):
            same = torch.ones_like(side['labels'], dtype=torch.bool) if class_agnostic_nms \
                else side['labels'] == label
            higher = side['scores'].double() >= score - score_atol
            iou = _pairwise_iou(box[None], side['bboxes'])[0]
            near_thr = (iou - nms_iou).abs() <= iou_eps
            near_score = (iou > nms_iou) & ((side['scores'].double() - score).abs() <= score_atol)
            not_self = iou < 1.0 - 1e-9
            if (same & higher & not_self & (near_thr | near_score)).any():
                return 'nms'
    if extra_own is not None and len(extra_own['scores']):
        close = ((extra_own['labels'] == label)
                 & ((extra_own['scores'].double() - score).abs() <= score_atol)
                 & ((extra_own['bboxes'].double() - box).abs().max(1).values
                    <= _box_tol(box, 1e-3)))
        if close.any():
            return 'traced'
    if extra_other is not None and len(extra_other['scores']) and nms_iou is not None:
        iou = _pairwise_iou(box[None], extra_other['bboxes'])[0]
        if ((extra_other['labels'] == label) & (iou > nms_iou)
                & (extra_other['scores'].double() > score)).any():
            return 'traced'
    return None


def assert_same_detections(ours, ref, box_rtol=1e-3, score_atol=1e-4, min_mask_iou=0.99,
                           label_offset=0, max_num=None, score_thr=None, nms_iou=None,
                           class_agnostic_nms=False, extra_ours=None, extra_ref=None,
                           max_flip_fraction=0.01):
    """Every detection of each side paired with one of the other (labels equal after
    ``label_offset`` is added to ours, boxes, scores), except near-tie flips that
    :func:`explain_flip` can name (``max_num``, ``score_thr``, ``nms_iou`` describe the
    post-processing that produced both; ``extra_*`` the pre-NMS detections of a side's flipped
    inputs). Flips may be at most ``max_flip_fraction`` of the detections (at least 2 per
    side). Pooled mask IoU over the pairs > ``min_mask_iou``. Returns the pairs."""
    ours = dict(ours, labels=ours['labels'] + label_offset)
    if extra_ours is not None:
        extra_ours = dict(extra_ours, labels=extra_ours['labels'] + label_offset)
    n_ours, n_ref = len(ours['scores']), len(ref['scores'])
    pairs, un_ref, un_ours = match_detections(ours, ref, box_rtol, score_atol)
    rules = dict(score_atol=score_atol, max_num=max_num, score_thr=score_thr, nms_iou=nms_iou,
                 class_agnostic_nms=class_agnostic_nms)
    unexplained = [('reference', ref, i) for i in un_ref
                   if explain_flip(i, ref, ours, extra_own=extra_ref, extra_other=extra_ours,
                                **rules) is None]
    unexplained += [('ours', ours, j) for j in un_ours
                    if explain_flip(j, ours, ref, extra_own=extra_ours, extra_other=extra_ref,
                                 **rules) is None]
    limit = max(2, int(max_flip_fraction * max(n_ours, n_ref)))
    msg = f'{n_ours} detections vs {n_ref} reference; unmatched: {len(un_ref)} of the ' \
          f'reference, {len(un_ours)} of ours'
    if unexplained:
        side, dets, i = unexplained[0]
        other = ours if side == 'reference' else ref
        d = (other['bboxes'].double() - dets['bboxes'][i].double()).abs().max(1).values
        j = d.argmin().item() if len(d) else None
        near = (f'nearest on the other side: box {other["bboxes"][j].tolist()} score '
                f'{other["scores"][j].item():.6f} label {other["labels"][j].item()}'
                if j is not None else 'no detections on the other side')
        msg += (f'; {len(unexplained)} not explained by a near-tie, first ({side}): box '
                f'{dets["bboxes"][i].tolist()} score {dets["scores"][i].item():.6f} label '
                f'{dets["labels"][i].item()}; {near}')
    assert not unexplained and max(len(un_ref), len(un_ours)) <= limit, msg
    if 'masks' in ref and min_mask_iou is not None:
        ri, oj = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs)) if pairs else \
            (torch.zeros(0, dtype=torch.long),) * 2
        pooled, per = mask_iou(ours['masks'][oj], ref['masks'][ri])
        assert pooled > min_mask_iou, \
            f'mask IoU {pooled:.4f} <= {min_mask_iou} (worst instance {per.min().item():.3f})'
    return pairs


def unpaired(pairs, n, side):
    """Indices in ``range(n)`` that no pair uses on ``side`` (0: reference, 1: ours)."""
    used = {p[side] for p in pairs}
    return [k for k in range(n) if k not in used]


@torch.no_grad()
def pre_nms_detections(roi_head, feats, boxes, data_sample, rescale=True):
    """Every class-wise detection the RoI head makes from ``boxes`` before NMS (score
    threshold 0, no suppression, no limit): what an input only one side has can add."""
    from mmengine.structures import InstanceData
    saved = roi_head.test_cfg
    roi_head.test_cfg = dict(saved or {}, score_thr=-1.0, max_per_img=-1,
                             nms=dict(type='nms', iou_threshold=1.0))
    try:
        res = roi_head.predict(feats, [InstanceData(bboxes=boxes)], [data_sample],
                               rescale=rescale)[0]
    finally:
        roi_head.test_cfg = saved
    return dict(bboxes=res.bboxes, scores=res.scores, labels=res.labels)


# ----------------------------------------------------------------------------- MMDetection check
# The stage-by-stage comparison of tests/test_parity_mmdet.py, shared with the tests of other
# MMDetection models (tests/test_parity_mmdet_panet_gcnet.py).

# Tensors: max abs error relative to the reference's max |value|. Float32 sums in another
# order through ResNet-50 give ~1e-4; a real difference (e.g. RoIAlign aligned=True vs False)
# gives > 1e-1.
FEAT_REL = 5e-4
# Head calls run on our own proposals / detections, which carry float noise of their own (RoI
# coordinates differ in the last bits), hence looser than the stage-0 check on shared inputs.
CALL_REL = 1e-3


def data_sample(metainfo):
    """A DetDataSample carrying the reference's metainfo (lists back to tuples)."""
    from cascade_seg.structures import DetDataSample
    meta = {k: tuple(v) if isinstance(v, list) else v for k, v in metainfo.items()}
    return DetDataSample(metainfo=meta)


def compare_head_calls(kind, ours, ref, perm, check=None):
    """Every ``kind`` ('bbox'|'mask') head call, in order: same count, same outputs.

    ``perm[i]`` is our row for the reference's row ``i`` (-1 where a near-tie flip left it
    without a partner; such rows are not compared). A call's outputs are the logits (box:
    cls_score, bbox_pred; mask: logits) and, for HTC's information flow, the mask feature; each
    of ours is compared with the reference output of the same shape (ours may skip logits
    nobody uses).
    """
    check = check or assert_tensor_close
    o = [c for c in ours if c['kind'] == kind]
    r = [c for c in ref if c['module'].startswith(f'roi_head.{kind}_head')]
    assert len(o) == len(r), f'{len(o)} {kind} head calls vs {len(r)} in the reference'
    paired = perm >= 0
    for i, (oc, rc) in enumerate(zip(o, r)):
        for t in oc['outputs']:
            same = [x for x in rc['outputs'] if x.shape[1:] == t.shape[1:]]
            assert same, f'{kind} call {i}: output {tuple(t.shape)} not in the reference'
            check(f'{kind} call {i} ({oc["name"]}) output {tuple(t.shape)}',
                  t[perm[paired]], same[0][paired], rel=CALL_REL)


def nms_rules(cfg):
    """The post-processing that both sides share, for telling near-tie flips from errors."""
    return dict(max_num=cfg['max_per_img'], nms_iou=cfg['nms']['iou_threshold'])


@torch.no_grad()
def check_parity(config, ref, cfg_options=None, errors=None, e2e_score_atol=1e-4):
    """Our model from ``config`` (+ ``cfg_options``) on the reference's converted weights and
    batch, compared stage by stage; the first stage that parts raises AssertionError.
    ``errors``, when a dict, receives each compared tensor's ``(max abs, max rel)`` error.
    ``e2e_score_atol``: the score tolerance of the end-to-end step only, where each side runs
    the RoI head on its own proposals (float noise in their coordinates moves the scores)."""
    from mmengine.structures import InstanceData

    from cascade_seg.models.roi_heads.stage_config import merge_cfg
    from cascade_seg.models.task_utils import boxes_to_rois
    from cascade_seg.utils import convert_mmdet

    def close(name, ours, theirs, rel):
        if errors is not None:
            errors[name] = max_errors(ours, theirs)
        assert_tensor_close(name, ours, theirs, rel)

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
        close(f'neck P{lvl + 2}', f, rf, FEAT_REL)

    # 2. RPN raw outputs and proposals
    cls_scores, bbox_preds = model.rpn_head(feats)
    for lvl in range(len(feats)):
        close(f'rpn_cls P{lvl + 2}', cls_scores[lvl], ev['rpn_cls_scores'][lvl], FEAT_REL)
        close(f'rpn_reg P{lvl + 2}', bbox_preds[lvl], ev['rpn_bbox_preds'][lvl], FEAT_REL)
    proposals = model.rpn_head.predict(feats, [sample])[0]
    rp = ev['rpn_proposals']
    # paired regardless of rank; the 1000-proposal cut and NMS may split near-ties apart
    roi_pairs = assert_same_detections(proposals.to_dict(), rp, min_mask_iou=None,
                                       class_agnostic_nms=True, **rpn_rules)

    # 3. stage-0 box head on the reference's proposals
    roi_head = model.roi_head
    if 'semantic_feat' in ev:
        close('semantic feature', roi_head.semantic_head(feats)[1], ev['semantic_feat'],
              FEAT_REL)
    roi_feats, _ = roi_head.roi_features(feats, [sample])
    cls0, reg0, _ = roi_head.bbox_forward(0, roi_feats, boxes_to_rois([rp['bboxes']]))
    close('stage-0 cls_score', cls0, ev['stage0_cls_score'], FEAT_REL)
    close('stage-0 bbox_pred', reg0, ev['stage0_bbox_pred'], FEAT_REL)

    # 4. the RoI head on the reference's proposals, recording every box/mask head call: the
    # same inputs, so every box head row is compared, and every mask row of paired detections
    pred = ev['pred_instances']
    calls, remove = record_head_calls(model)
    try:
        given = InstanceData(bboxes=rp['bboxes'], scores=rp['scores'])
        out = roi_head.predict(feats, [given], [sample])[0]
    finally:
        remove()
    compare_head_calls('bbox', calls, ev['head_calls'], torch.arange(len(rp['scores'])), close)
    det_pairs = assert_same_detections(out.to_dict(), pred, **rcnn_rules)
    compare_head_calls('mask', calls, ev['head_calls'],
                       permutation(det_pairs, len(pred['scores'])), close)

    # 5. end to end; a proposal that only one side has (a near-tie flip of step 2) may add
    # detections or suppress some: each must be traced to it
    out = model.predict(inputs, [data_sample(ev['metainfo'])])[0].pred_instances
    extra_ours, extra_ref = (
        pre_nms_detections(roi_head, feats, boxes[unpaired(roi_pairs, len(boxes), side)], sample)
        for boxes, side in ((proposals.bboxes, 1), (rp['bboxes'], 0)))
    assert_same_detections(out.to_dict(), pred, extra_ours=extra_ours, extra_ref=extra_ref,
                           score_atol=e2e_score_atol, **rcnn_rules)


# ------------------------------------------------------------------------ MMDetection reference

def find_mmdet_python():
    """The MMDetection 3.3 reference interpreter: ``$CASCADE_SEG_MMDET_PY``, else the one
    ``../shared/mmdet_ref/setup.sh`` (beside the repo) builds or finds; ``(path, why_not)``."""
    py = os.environ.get('CASCADE_SEG_MMDET_PY')
    if py:
        return (py, None) if osp.isfile(py) else (None, f'CASCADE_SEG_MMDET_PY={py} not found')
    setup = osp.join(REPO, '..', 'shared', 'mmdet_ref', 'setup.sh')
    if not osp.isfile(setup):
        return None, ('no MMDetection reference: set CASCADE_SEG_MMDET_PY or provide '
                      f'{osp.normpath(setup)}')
    res = subprocess.run(['bash', setup], capture_output=True, text=True, timeout=900)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines or not osp.isfile(lines[-1]):
        return None, f'mmdet reference setup failed: {res.stderr.strip()[-500:]}'
    return lines[-1], None


def mmdet_python_or_skip():
    """The reference interpreter for a test; without one the test skips, except under CI
    (``CI=true``), where a missing reference fails it."""
    import pytest
    python, why = find_mmdet_python()
    if python is None:
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(f'CI must run the MMDetection parity tests: {why}')
        pytest.skip(why)
    return python


def mmdet_ref_script():
    script = os.environ.get('CASCADE_SEG_MMDET_REF_SCRIPT') or \
        osp.join(REPO, '..', 'shared', 'mmdet_ref', 'mmdet_ref.py')
    if not osp.isfile(script):
        raise FileNotFoundError(f'mmdet_ref.py not found at {osp.normpath(script)} '
                                '(set CASCADE_SEG_MMDET_REF_SCRIPT)')
    return script


# Runs in the reference interpreter: mmdet_ref.py's model building and evaluation dump, minus
# its training-step dump (a third of its time), which the parity tests do not use. Each entry
# is ``key=config=flag``: the dump of mmdet config (or alias) ``config`` goes to ref_<key>.pt;
# flag 1 re-draws every GCNet ContextBlock's zero-initialised last conv and its LayerNorm's
# affine parameters (seeded) before the norm layers are randomised and calibrated, so that a
# fresh block is not the identity and the comparison sees its transform.
_DUMP_DRIVER = """
import logging, os, sys, warnings
import torch
script, size, threads, out_dir, *entries = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
import mmdet_ref
from mmengine.logging import MMLogger
warnings.filterwarnings('ignore')
torch.set_num_threads(int(threads))
MMLogger.get_current_instance().setLevel(logging.WARNING)
size = (int(size), int(size))


def randomize_context_blocks(model, seed):
    g = torch.Generator().manual_seed(seed + 4242)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ != 'ContextBlock':
                continue
            for t in (getattr(m, 'channel_add_conv', None), getattr(m, 'channel_mul_conv', None)):
                if t is None:
                    continue
                ln, last = t[1], t[-1]
                ln.weight.copy_(0.5 + torch.rand(ln.weight.shape, generator=g))
                ln.bias.copy_(0.1 * torch.randn(ln.bias.shape, generator=g))
                bound = last.in_channels ** -0.5
                last.weight.copy_((2 * torch.rand(last.weight.shape, generator=g) - 1) * bound)
                last.bias.copy_((2 * torch.rand(last.bias.shape, generator=g) - 1) * bound)


for entry in entries:
    key, config, flag = entry.split('=')
    if flag == '1':
        model, cfg, _ = mmdet_ref.build_model(config, 0, 0.0, None, False, size)
        randomize_context_blocks(model, 0)
        mmdet_ref.randomize_norm(model, 0, size)
    else:
        model, cfg, _ = mmdet_ref.build_model(config, 0, 0.0, None, True, size)
    dump = dict(model=key, config_text=cfg.pretty_text, randomize_norm=True,
                randomize_context_blocks=flag == '1',
                state_dict={k: v.detach().clone() for k, v in model.state_dict().items()})
    dump['eval'] = mmdet_ref.eval_dump(model, size, 0)
    path = os.path.join(out_dir, f'ref_{key}.pt')
    torch.save(dump, path)
    print(f'[{key}] dumped -> {path}', flush=True)
"""


class MMDetDumps:
    """Reference dumps (seed 0, randomised norms, score threshold 0: every detection kept) made
    by ONE background run of the reference interpreter, so that it computes the next model while
    we test the previous one. ``get(alias)`` waits for that alias's dump and loads it.

    ``aliases`` are mmdet_ref.py's model aliases, or keys of ``configs`` (key -> mmdet config
    path relative to mmdet's configs, since a path cannot name a dump file); the keys in
    ``randomize_context_blocks`` get non-identity GCNet blocks (see ``_DUMP_DRIVER``)."""

    def __init__(self, python, aliases, out_dir, size=320, threads=1, configs=None,
                 randomize_context_blocks=()):
        self.out_dir = str(out_dir)
        self.done = {a: threading.Event() for a in aliases}
        configs = configs or {}
        entries = [f'{a}={configs.get(a, a)}={int(a in randomize_context_blocks)}'
                   for a in aliases]
        cmd = [python, '-c', _DUMP_DRIVER, mmdet_ref_script(), str(size), str(threads),
               self.out_dir, *entries]
        self.cmd = f'{python} -c <mmdet_ref dump driver> {" ".join(cmd[3:])}'
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.log = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.append(line)
            for alias, event in self.done.items():
                if line.startswith(f'[{alias}] dumped'):
                    event.set()
        self.proc.wait()
        for event in self.done.values():  # a crash wakes every waiter
            event.set()

    def get(self, alias, timeout=500):
        if not self.done[alias].wait(timeout):
            raise TimeoutError(f'no reference dump for {alias} after {timeout}s: {self.cmd}')
        path = osp.join(self.out_dir, f'ref_{alias}.pt')
        if not osp.isfile(path):
            raise RuntimeError(f'{self.cmd} failed:\n' + ''.join(self.log)[-3000:])
        return torch.load(path, map_location='cpu', weights_only=False)  # our own file

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
