"""The one RoI head: Mask R-CNN (1 stage), Cascade Mask R-CNN and HTC are configurations of it.

See docs/cascade_head.md for the config schema and the strategies.
"""
import copy
import inspect

import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import nn

from cascade_seg.registry import MODELS, TASK_UTILS

from ..task_utils import boxes_to_rois, mask_targets, paste_masks
from .bbox_heads import bbox_targets, postprocess_detections, refine_boxes, regress_by_class

STAGE_KEYS = ('bbox_roi_extractor', 'bbox_head', 'mask_roi_extractor', 'mask_head')
MASK_STAGE_MODES = ('all', 'first', 'last', 'shared')


def merge_cfg(base, override):
    """mmengine-style recursive merge of ``override`` onto ``base`` (neither is modified).

    Nested dicts merge key by key; any other value (or a dict with ``_delete_=True``) replaces.
    """
    if not isinstance(override, dict):
        return copy.deepcopy(override)
    if not isinstance(base, dict) or override.get('_delete_', False):
        return {k: copy.deepcopy(v) for k, v in override.items() if k != '_delete_'}
    merged = {k: copy.deepcopy(v) for k, v in base.items()}
    for k, v in override.items():
        merged[k] = merge_cfg(merged.get(k), v)
    return merged


def _with_class_defaults(cfg, override, registry=MODELS):
    """Fill keys that ``override`` changes but ``cfg`` leaves to the class defaults (e.g. a
    head's ``bbox_coder``), so a partial override merges onto the real default."""
    if not isinstance(cfg, dict) or not isinstance(override, dict) or 'type' not in cfg:
        return cfg
    missing = [k for k, v in override.items() if k not in cfg and isinstance(v, dict)]
    if not missing:
        return cfg
    cfg = dict(cfg)
    cls = cfg['type'] if inspect.isclass(cfg['type']) else registry.get(cfg['type'])
    for klass in cls.__mro__:  # subclasses may pass their defaults on as **kwargs
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        for k in [k for k in missing if k in params and isinstance(params[k].default, dict)]:
            cfg[k] = params[k].default
            missing.remove(k)
    return cfg


def stage_cfgs(defaults, overrides, num_stages, allowed_keys=None):
    """One config per stage: ``defaults`` (a list is taken as already per stage) merged with
    ``overrides['s{t}']``. Unknown stage names or keys raise ``KeyError``."""
    overrides = dict(overrides or {})
    names = {f's{t}' for t in range(num_stages)}
    unknown = set(overrides) - names
    if unknown:
        raise KeyError(f'stage_overrides has {sorted(unknown)}; stages are {sorted(names)}')
    out = []
    for t in range(num_stages):
        base = defaults[t] if isinstance(defaults, (list, tuple)) else defaults
        override = overrides.get(f's{t}') or {}
        if allowed_keys is not None and set(override) - set(allowed_keys):
            raise KeyError(f'stage_overrides.s{t} has {sorted(set(override) - set(allowed_keys))}; '
                           f'allowed keys are {list(allowed_keys)}')
        if allowed_keys is not None:  # module configs: partial overrides of class defaults
            base = {k: _with_class_defaults(v, override.get(k)) for k, v in base.items()}
        out.append(merge_cfg(base, override))
    return out


def resolve_mask_stages(mask_stages, num_stages):
    """``'all' | 'first' | 'last' | 'shared' | [ids]`` -> sorted stage ids that train a mask."""
    if mask_stages in ('all', 'shared'):
        return list(range(num_stages))
    if mask_stages == 'first':
        return [0]
    if mask_stages == 'last':
        return [num_stages - 1]
    if isinstance(mask_stages, str):
        raise ValueError(f'mask_stages must be one of {MASK_STAGE_MODES} or a list of stage ids, '
                         f'got {mask_stages!r}')
    stages = sorted({int(t) for t in mask_stages})
    if not stages or stages[0] < 0 or stages[-1] >= num_stages:
        raise ValueError(f'mask_stages {mask_stages!r} must be ids in [0, {num_stages})')
    return stages


def _build_unique(cfgs, registry):
    """Build one module per distinct config. Returns (ModuleList, index of each cfg's module)."""
    seen, modules, index = [], nn.ModuleList(), []
    for cfg in cfgs:
        if cfg not in seen:
            seen.append(cfg)
            modules.append(registry.build(cfg))
        index.append(seen.index(cfg))
    return modules, index


def avg_pool_to(x, size):
    """``F.adaptive_avg_pool2d(x, size)``; for whole-number factors (HTC: 14 -> 7) a reshape-mean
    over the same windows, which keeps no copy of ``x`` for backward (100 MB per HTC stage)."""
    (h, w), (oh, ow) = x.shape[-2:], size
    if h % oh or w % ow:
        return F.adaptive_avg_pool2d(x, size)
    return x.reshape(*x.shape[:-2], oh, h // oh, ow, w // ow).mean(dim=(-3, -1))


def _get(cfg, key, default=None):
    return default if cfg is None else cfg.get(key, default)


@MODELS.register_module()
class CascadeRoIHead(nn.Module):
    """Multi-stage box refinement with optional mask heads, set entirely by config.

    Parameters are named ``bbox_head.{t}.*`` and ``mask_head.{t}.*`` (MMDetection's cascade
    names); a 1-stage head also loads MMDetection's un-indexed Mask R-CNN names.
    """

    def __init__(self, num_stages=1, stage_loss_weights=(1.0,), bbox_roi_extractor=None,
                 bbox_head=None, mask_roi_extractor=None, mask_head=None,
                 share_roi_extractor=False, mask_stages='all', interleaved=False,
                 mask_info_flow=False, semantic_roi_extractor=None, semantic_head=None,
                 semantic_fusion=('bbox', 'mask'), stage_overrides=None, score_average='mean',
                 mask_average='all', train_cfg=None, test_cfg=None, init_cfg=None):
        super().__init__()
        if bbox_roi_extractor is None or bbox_head is None:
            raise ValueError('CascadeRoIHead needs bbox_roi_extractor and bbox_head')
        if len(stage_loss_weights) != num_stages:
            raise ValueError(f'{len(stage_loss_weights)} stage_loss_weights for '
                             f'{num_stages} stages')
        if score_average not in ('mean', 'last') or mask_average not in ('all', 'last'):
            raise ValueError("score_average must be 'mean'|'last', mask_average 'all'|'last'")
        self.num_stages = num_stages
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.interleaved = interleaved
        self.mask_info_flow = mask_info_flow
        self.semantic_fusion = tuple(semantic_fusion)
        self.score_average = score_average
        self.mask_average = mask_average
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

        # A list value (MMDetection's style) already gives one config per stage.
        defaults = dict(zip(STAGE_KEYS, (bbox_roi_extractor, bbox_head, mask_roi_extractor,
                                         mask_head)))
        cfgs = stage_cfgs([{k: v[t] if isinstance(v, (list, tuple)) else v
                            for k, v in defaults.items()} for t in range(num_stages)],
                          stage_overrides, num_stages, STAGE_KEYS)
        self.bbox_roi_extractor, self._bbox_extractor_idx = _build_unique(
            [c['bbox_roi_extractor'] for c in cfgs], MODELS)
        self.bbox_head = nn.ModuleList(MODELS.build(c['bbox_head']) for c in cfgs)

        self.with_mask = mask_head is not None or any(c['mask_head'] for c in cfgs)
        self.mask_stages = resolve_mask_stages(mask_stages, num_stages) if self.with_mask else []
        self.shared_mask_head = mask_stages == 'shared'
        self.share_roi_extractor = False
        if self.with_mask:
            self._build_mask_branch(cfgs, share_roi_extractor)

        self.with_semantic = semantic_head is not None
        if self.with_semantic:
            self.semantic_roi_extractor = MODELS.build(semantic_roi_extractor)
            self.semantic_head = MODELS.build(semantic_head)

        self.assigners, self.samplers = [], []
        if train_cfg is not None:
            self.stage_train_cfgs = self._stage_train_cfgs(train_cfg)
            self.assigners = [TASK_UTILS.build(c['assigner']) for c in self.stage_train_cfgs]
            self.samplers = [TASK_UTILS.build(c['sampler']) for c in self.stage_train_cfgs]

    # ------------------------------------------------------------------ construction
    def _build_mask_branch(self, cfgs, share_roi_extractor):
        if self.shared_mask_head and self.mask_info_flow:
            raise ValueError('mask_info_flow chains a different mask head per stage; '
                             "it cannot be combined with mask_stages='shared'")
        head_stages = [0] if self.shared_mask_head else self.mask_stages
        self.mask_head = nn.ModuleDict()
        for t in head_stages:
            cfg = cfgs[t]['mask_head']
            if not cfg:
                raise ValueError(f'stage {t} trains a mask but has no mask_head config')
            if self.mask_info_flow:
                # Every mask head but the first takes the previous one's feature.
                cfg = dict(cfg, with_conv_res=cfg.get('with_conv_res', t != head_stages[0]))
            self.mask_head[str(t)] = MODELS.build(cfg)
        # Which head runs for a stage, and the stages whose heads run at test time (each once).
        self._mask_head_key = {t: '0' if self.shared_mask_head else str(t)
                               for t in self.mask_stages}
        self.test_mask_stages = head_stages

        mask_extractor_cfgs = [c['mask_roi_extractor'] for c in cfgs]
        self.share_roi_extractor = share_roi_extractor or all(
            c is None for c in mask_extractor_cfgs)
        if self.share_roi_extractor:
            self.mask_roi_extractor = None
        else:
            self.mask_roi_extractor, self._mask_extractor_idx = _build_unique(
                mask_extractor_cfgs, MODELS)

    def _stage_train_cfgs(self, train_cfg):
        if isinstance(train_cfg, (list, tuple)):  # MMDetection's per-stage list
            return stage_cfgs(list(train_cfg), None, self.num_stages)
        defaults = {k: v for k, v in train_cfg.items() if k != 'stage_overrides'}
        return stage_cfgs(defaults, train_cfg.get('stage_overrides'), self.num_stages)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MMDetection's Mask R-CNN (StandardRoIHead) names its heads without a stage index.
        if self.num_stages == 1:
            for name in ('bbox_head', 'mask_head'):
                head = f'{prefix}{name}.'
                for key in [k for k in state_dict if k.startswith(head)
                            and not k[len(head):].split('.', 1)[0].isdigit()]:
                    state_dict[f'{head}0.{key[len(head):]}'] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ features
    def bbox_extractor(self, stage):
        return self.bbox_roi_extractor[self._bbox_extractor_idx[stage]]

    def mask_extractor(self, stage):
        if self.share_roi_extractor:
            return self.bbox_extractor(stage)
        return self.mask_roi_extractor[self._mask_extractor_idx[stage]]

    def mask_head_of(self, stage):
        return self.mask_head[self._mask_head_key[stage]]

    def _fuse_semantic(self, roi_feats, rois, semantic_feat, branch):
        """Add the semantic feature pooled at ``rois`` (HTC), resized to the RoI feature size."""
        if semantic_feat is None or branch not in self.semantic_fusion:
            return roi_feats
        sem = self.semantic_roi_extractor([semantic_feat], rois)
        if sem.shape[-2:] != roi_feats.shape[-2:]:
            sem = avg_pool_to(sem, roi_feats.shape[-2:]) if sem.numel() else \
                sem.new_zeros(roi_feats.shape)
        return roi_feats + sem

    def _bbox_forward(self, stage, x, rois, semantic_feat=None):
        """Returns (cls_score, bbox_pred, raw RoI features before semantic fusion)."""
        raw = self.bbox_extractor(stage)(x, rois)
        feats = self._fuse_semantic(raw, rois, semantic_feat, 'bbox')
        cls_score, bbox_pred = self.bbox_head[stage](feats)
        return cls_score, bbox_pred, raw

    def _mask_feats(self, stage, x, rois, semantic_feat=None, raw=None):
        if raw is None:
            raw = self.mask_extractor(stage)(x, rois)
        return self._fuse_semantic(raw, rois, semantic_feat, 'mask')

    def _mask_logits(self, stage, mask_feats):
        """Logits of ``stage``'s mask head; with info flow, earlier mask heads feed it."""
        res_feat = None
        if self.mask_info_flow:
            for s in self.mask_stages:
                if s >= stage:
                    break
                res_feat = self.mask_head_of(s)(mask_feats, res_feat, return_logits=False)
        return self.mask_head_of(stage)(mask_feats, res_feat)

    # ------------------------------------------------------------------ training
    @staticmethod
    def _gts(batch_data_samples):
        gts, ignores = [], []
        for s in batch_data_samples:
            gts.append(s.gt_instances)
            ign = s.get('ignored_instances', None)
            ignores.append(ign.bboxes if ign is not None and 'bboxes' in ign else None)
        return gts, ignores

    def _assign_and_sample(self, stage, proposals, gts, ignores):
        results = []
        for boxes, gt, ign in zip(proposals, gts, ignores):
            assign = self.assigners[stage].assign(boxes, gt.bboxes, gt.labels, ign)
            results.append(self.samplers[stage].sample(assign, boxes, gt.bboxes, gt.labels))
        return results

    def _mask_loss(self, stage, x, samples, gts, semantic_feat, raw_pos_feats=None):
        pos_rois = boxes_to_rois([s.pos_priors for s in samples])
        mask_feats = self._mask_feats(stage, x, pos_rois, semantic_feat, raw_pos_feats)
        logits = self._mask_logits(stage, mask_feats)
        cfg = self.stage_train_cfgs[stage]
        size = cfg.get('mask_size', 28)
        binarize = not cfg.get('soft_mask_target', False)
        targets = torch.cat([mask_targets(s.pos_priors, s.pos_gt_inds, gt.masks, size,
                                          binarize=binarize)
                             for s, gt in zip(samples, gts)]).to(logits)
        labels = torch.cat([s.pos_gt_labels for s in samples]).long()
        return self.mask_head_of(stage).loss(logits, targets, labels)

    def loss(self, x, rpn_results_list, batch_data_samples):
        """Losses ``s{t}.loss_cls / s{t}.acc / s{t}.loss_bbox / s{t}.loss_mask`` (+
        ``loss_semantic_seg``); every ``loss*`` is already scaled by ``stage_loss_weights[t]``."""
        if self.train_cfg is None:
            raise RuntimeError('CascadeRoIHead.loss needs train_cfg (assigner, sampler)')
        gts, ignores = self._gts(batch_data_samples)
        img_shapes = [s.metainfo['img_shape'] for s in batch_data_samples]
        losses = {}
        semantic_feat = None
        if self.with_semantic:
            seg_logits, semantic_feat = self.semantic_head(x)
            gt_sem = torch.stack([s.gt_sem_seg.sem_seg for s in batch_data_samples])
            losses['loss_semantic_seg'] = self.semantic_head.loss(seg_logits, gt_sem)

        proposals = [r.bboxes.detach() for r in rpn_results_list]
        for t in range(self.num_stages):
            head = self.bbox_head[t]
            samples = self._assign_and_sample(t, proposals, gts, ignores)
            rois = boxes_to_rois([s.priors for s in samples])
            cls_score, bbox_pred, raw_feats = self._bbox_forward(t, x, rois, semantic_feat)
            targets = bbox_targets(samples, head.num_classes, head.bbox_coder,
                                   self.stage_train_cfgs[t].get('pos_weight', -1),
                                   head.reg_decoded_bbox)
            stage_losses = head.loss(cls_score, bbox_pred, rois, *targets)

            is_mask_stage = t in self.mask_stages
            if t < self.num_stages - 1 or (is_mask_stage and self.interleaved):
                with torch.no_grad():
                    proposals = refine_boxes(rois, targets[0], cls_score, bbox_pred,
                                             [s.pos_is_gt for s in samples], head.bbox_coder,
                                             img_shapes, head.num_classes)
            if is_mask_stage:
                raw_pos = None
                if self.interleaved:
                    # HTC: the mask branch learns on boxes this stage has already regressed.
                    samples = self._assign_and_sample(t, proposals, gts, ignores)
                elif self.share_roi_extractor:
                    # Positives lead each image's sampled RoIs: reuse their box features.
                    raw_pos = raw_feats[torch.cat([torch.arange(len(s.priors)) < len(s.pos_priors)
                                                   for s in samples]).to(raw_feats.device)]
                stage_losses['loss_mask'] = self._mask_loss(t, x, samples, gts, semantic_feat,
                                                            raw_pos)
            w = self.stage_loss_weights[t]
            for k, v in stage_losses.items():
                losses[f's{t}.{k}'] = v * w if 'loss' in k else v
        return losses

    # ------------------------------------------------------------------ inference
    def _refine_rois(self, x, rois, num_per_img, img_shapes, semantic_feat=None):
        """Run every stage; returns (averaged cls logits, last bbox_pred, last stage's rois)."""
        scores = []
        for t in range(self.num_stages):
            cls_score, bbox_pred, _ = self._bbox_forward(t, x, rois, semantic_feat)
            scores.append(cls_score)
            if t < self.num_stages - 1:
                head = self.bbox_head[t]
                labels = cls_score[:, :head.num_classes].argmax(1)
                rois = torch.cat([
                    regress_by_class(r, lab, p, head.bbox_coder, shape) for r, lab, p, shape in
                    zip(rois.split(num_per_img), labels.split(num_per_img),
                        bbox_pred.split(num_per_img), img_shapes)])
        # Sum then divide, in stage order, as MMDetection does (bitwise-identical scores).
        cls_score = sum(scores) / float(len(scores)) if self.score_average == 'mean' else scores[-1]
        return cls_score, bbox_pred, rois

    def _detections(self, rois, cls_score, bbox_pred, num_per_img, metas, rescale_boxes):
        cfg = self.test_cfg or {}
        nms_cfg = _get(cfg, 'nms') or dict(type='nms', iou_threshold=0.5)
        if nms_cfg.get('type', 'nms') != 'nms':
            raise NotImplementedError(f"only nms type 'nms' is supported, got {nms_cfg}")
        head = self.bbox_head[-1]
        results = []
        for r, s, p, meta in zip(rois.split(num_per_img), cls_score.split(num_per_img),
                                 bbox_pred.split(num_per_img), metas):
            k = p.size(1) // 4
            boxes = head.bbox_coder.decode(r[:, 1:].repeat_interleave(k, dim=0), p.reshape(-1, 4),
                                           max_shape=meta['img_shape'])
            if rescale_boxes:
                boxes = boxes * boxes.new_tensor(
                    [1.0 / f for f in meta['scale_factor']]).repeat(2)
            det_boxes, det_scores, det_labels = postprocess_detections(
                boxes.view(r.size(0), 4 * k), F.softmax(s, dim=-1), _get(cfg, 'score_thr', 0.05),
                nms_cfg.get('iou_threshold', 0.5), _get(cfg, 'max_per_img', 100),
                _get(cfg, 'min_bbox_size', 0))
            results.append(InstanceData(bboxes=det_boxes, scores=det_scores, labels=det_labels))
        return results

    def _mask_probs(self, x, mask_rois, labels, semantic_feat):
        """Per-RoI foreground probabilities of the final boxes, averaged over mask stages."""
        feats_by_extractor, probs, res_feat = {}, [], None
        stages = self.test_mask_stages
        if self.mask_average == 'last' and not self.mask_info_flow:
            stages = stages[-1:]
        for t in stages:
            key = -1 if self.share_roi_extractor else self._mask_extractor_idx[t]
            if key not in feats_by_extractor:  # RoI features are extracted once per extractor
                feats_by_extractor[key] = self._mask_feats(t, x, mask_rois, semantic_feat)
            head = self.mask_head_of(t)
            if self.mask_info_flow and self.mask_average == 'last' and t != stages[-1]:
                # only the last mask is used: earlier heads just pass their feature on
                res_feat = head(feats_by_extractor[key], res_feat, return_logits=False)
                continue
            if self.mask_info_flow:
                logits, res_feat = head(feats_by_extractor[key], res_feat, return_feat=True)
            else:
                logits = head(feats_by_extractor[key])
            probs.append(head.mask_probs(logits, labels))
        if self.mask_average == 'last':
            return probs[-1]
        return sum(probs) / float(len(probs))

    def predict(self, x, rpn_results_list, batch_data_samples, rescale=True):
        """Per-image ``InstanceData(bboxes, scores, labels[, masks])``; with ``rescale`` boxes and
        masks are in the original image (``ori_shape``), else in the network input frame."""
        metas = [s.metainfo for s in batch_data_samples]
        semantic_feat = self.semantic_head(x)[1] if self.with_semantic else None
        proposals = [r.bboxes for r in rpn_results_list]
        num_per_img = [len(p) for p in proposals]
        rois = boxes_to_rois(proposals)
        # Box-only results are rescaled before NMS and box+mask ones after it (MMDetection's order).
        rescale_before_nms = rescale and not self.with_mask
        if rois.numel() == 0:
            device = x[0].device
            results = [InstanceData(bboxes=torch.zeros(0, 4, device=device),
                                    scores=torch.zeros(0, device=device),
                                    labels=torch.zeros(0, dtype=torch.long, device=device))
                       for _ in metas]
        else:
            cls_score, bbox_pred, rois = self._refine_rois(
                x, rois, num_per_img, [m['img_shape'] for m in metas], semantic_feat)
            results = self._detections(rois, cls_score, bbox_pred, num_per_img, metas,
                                       rescale_before_nms)
        if self.with_mask:
            self._predict_masks(x, results, metas, semantic_feat, rescale)
        return results

    def _predict_masks(self, x, results, metas, semantic_feat, rescale):
        cfg = self.test_cfg or {}
        mask_rois = boxes_to_rois([r.bboxes for r in results])
        if mask_rois.numel():
            labels = torch.cat([r.labels for r in results])
            probs = self._mask_probs(x, mask_rois, labels, semantic_feat)
            probs = probs.split([len(r) for r in results])
        else:
            probs = [None] * len(results)
        for r, p, meta in zip(results, probs, metas):
            shape = meta['ori_shape'] if rescale else meta['img_shape']
            if rescale:
                r.bboxes = r.bboxes / r.bboxes.new_tensor(meta['scale_factor']).repeat(2)
            if len(r) == 0:
                r.masks = torch.zeros((0, *shape[:2]), dtype=torch.bool, device=r.bboxes.device)
                continue
            r.masks = paste_masks(p, r.bboxes, shape, threshold=_get(cfg, 'mask_thr_binary', 0.5),
                                  mode=_get(cfg, 'mask_paste', 'grid_sample'))

    def forward(self, x, rpn_results_list, batch_data_samples):
        """Raw outputs over all proposals (``mode='tensor'``): averaged cls logits, last-stage
        box deltas, refined RoIs and, with masks, per-RoI mask probabilities."""
        metas = [s.metainfo for s in batch_data_samples]
        semantic_feat = self.semantic_head(x)[1] if self.with_semantic else None
        proposals = [r.bboxes for r in rpn_results_list]
        cls_score, bbox_pred, rois = self._refine_rois(
            x, boxes_to_rois(proposals), [len(p) for p in proposals],
            [m['img_shape'] for m in metas], semantic_feat)
        outs = (cls_score, bbox_pred, rois)
        if self.with_mask:
            labels = cls_score[:, :-1].argmax(1)
            outs += (self._mask_probs(x, rois, labels, semantic_feat),)
        return outs
