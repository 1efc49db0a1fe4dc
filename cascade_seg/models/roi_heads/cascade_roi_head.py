"""The one RoI head: a box cascade of 0..N stages and task branches (mask, keypoints, ...) that
are peers. Mask R-CNN (1 stage), Cascade Mask R-CNN and HTC are configurations of it; with 0
stages it runs its branches on given boxes (e.g. a one-stage detector's).

See docs/cascade_head.md for the config schema, the strategies and how to add a branch.
"""
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import nn

from cascade_seg.registry import MODELS, TASK_BRANCHES, TASK_UTILS

from cascade_seg.engine.precision import float32_island

from ..task_utils import boxes_to_rois
from .bbox_heads import bbox_targets, postprocess_detections, refine_boxes, regress_by_class
from .roi_features import RoIFeatures, SemanticContext, as_roi_features
from .stage_config import cfg_get, per_stage, stage_cfgs

BOX_KEYS = ('bbox_roi_extractor', 'bbox_head')


def task_names():
    """Registered task branches, longest name first (``mask_iou_*`` is not ``mask_*``)."""
    TASK_BRANCHES.import_from_location()
    return sorted(TASK_BRANCHES.module_dict, key=len, reverse=True)


def split_task_cfgs(task_cfgs):
    """``{'mask_head': .., 'mask_stages': .., 'keypoint_head': ..}`` ->
    ``{'mask': {'head': .., 'stages': ..}, 'keypoint': {'head': ..}}``."""
    tasks, out = task_names(), {}
    for key, value in task_cfgs.items():
        task = next((t for t in tasks if key.startswith(t + '_')), None)
        if task is None:
            known = sorted(f'{t}_{k}' for t in tasks for k in ('head', 'roi_extractor', 'stages'))
            raise TypeError(f'CascadeRoIHead got an unknown argument {key!r}; task branch keys '
                            f'are {{task}}_<name> for the registered tasks {sorted(tasks)}, '
                            f'e.g. {known}')
        out.setdefault(task, {})[key[len(task) + 1:]] = value
    return out


def stage_keys():
    """The keys ``stage_overrides.s{t}`` may change."""
    return BOX_KEYS + tuple(f'{t}_{k}' for t in sorted(task_names())
                            for k in ('roi_extractor', 'head'))


@MODELS.register_module()
class CascadeRoIHead(nn.Module):
    """Multi-stage box refinement with task branches, set entirely by config.

    Args:
        num_stages: box stages (0: boxes are given, the branches run on them).
        stage_loss_weights: one weight per stage (per sampling stage when 0 box stages).
        bbox_roi_extractor, bbox_head: every stage's box extractor and head (a list gives one
            per stage); ``bbox_head=None`` with ``num_stages=0``.
        {task}_roi_extractor, {task}_head, {task}_stages, {task}_<option>: a task branch
            registered in ``TASK_BRANCHES`` (``mask``, ``keypoint``, ...); it exists when
            ``{task}_head`` is set. A branch without its own extractor uses the box extractor;
            ``{task}_roi_extractor='mask'`` (a task name) pools with that branch's extractor.
        share_roi_extractor: branches pool with the box extractor of each stage.
        share_stage_extractors: one extractor module per task for all stages (default: one
            per stage, so a parametric extractor is never shared by accident).
        interleaved: HTC's interleaved execution: at a stage that trains branches, they
            learn on the boxes that stage has just regressed (re-assigned and re-sampled).
        semantic_roi_extractor, semantic_head, semantic_fusion: HTC's semantic context, added
            to the RoI features of the named tasks.
        stage_overrides: ``{'s1': {'bbox_head': {...}}}`` per-stage changes of the above.
        score_average: ``'mean'`` of every stage's class scores at test time, or ``'last'``.
        num_classes: sets ``num_classes`` of every box head and every class-predicting branch
            head (one key for a dataset's class count).

    Parameters are named ``bbox_head.{t}.*`` and ``{task}_head.{t}.*`` (MMDetection's cascade
    names); one-head stages also load the un-indexed names of MMDetection's Mask R-CNN.
    """

    def __init__(self, num_stages=1, stage_loss_weights=None, bbox_roi_extractor=None,
                 bbox_head=None, share_roi_extractor=False, share_stage_extractors=False,
                 interleaved=False, semantic_roi_extractor=None, semantic_head=None,
                 semantic_fusion=('bbox', 'mask'), stage_overrides=None, score_average='mean',
                 num_classes=None, train_cfg=None, test_cfg=None, init_cfg=None, **task_cfgs):
        super().__init__()
        if num_stages > 0 and (bbox_roi_extractor is None or bbox_head is None):
            raise ValueError('a RoI head with box stages needs bbox_roi_extractor and bbox_head')
        if score_average not in ('mean', 'last'):
            raise ValueError("score_average must be 'mean' or 'last'")
        self.num_stages = num_stages
        # Samples are drawn at every box stage, or once for branches on given boxes.
        self.num_sample_stages = max(num_stages, 1)
        if stage_loss_weights is None:
            stage_loss_weights = (1.0,) * self.num_sample_stages
        if len(stage_loss_weights) != self.num_sample_stages:
            raise ValueError(f'{len(stage_loss_weights)} stage_loss_weights for '
                             f'{self.num_sample_stages} stages')
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.interleaved = interleaved
        self.score_average = score_average
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.share_roi_extractor = share_roi_extractor
        self.share_stage_extractors = share_stage_extractors

        tasks = split_task_cfgs(task_cfgs)
        n = self.num_sample_stages
        defaults = [dict(bbox_roi_extractor=e, bbox_head=h) for e, h in
                    zip(per_stage(bbox_roi_extractor, n), per_stage(bbox_head, n))]
        for task, opts in tasks.items():
            for t, (e, h) in enumerate(zip(per_stage(opts.pop('roi_extractor', None), n),
                                           per_stage(opts.pop('head', None), n))):
                defaults[t].update({f'{task}_roi_extractor': e, f'{task}_head': h})
        cfgs = stage_cfgs(defaults, stage_overrides, n, stage_keys())
        if num_classes is not None:
            self._set_num_classes(cfgs, num_classes)

        self.stage_train_cfgs = self._stage_train_cfgs(train_cfg) if train_cfg else None
        self.bbox_roi_extractor = self._build_extractors(
            [c['bbox_roi_extractor'] for c in cfgs[:num_stages]])
        self.bbox_head = nn.ModuleList(MODELS.build(c['bbox_head']) for c in cfgs[:num_stages])

        # Task branches, each registered as the module `{task}_head`.
        self.branch_names = []
        self.extractor_alias = {}   # task -> the task whose extractors it pools with
        for task in sorted(tasks, key=lambda t: TASK_BRANCHES.get(t).order):
            head_cfgs = [c.get(f'{task}_head') for c in cfgs]
            if not any(head_cfgs):
                continue  # e.g. mask_stages set for a box-only model
            branch = TASK_BRANCHES.get(task)(head_cfgs, train_cfgs=self.stage_train_cfgs,
                                             test_cfg=test_cfg, **tasks[task])
            self.add_module(f'{task}_head', branch)
            self.branch_names.append(task)
            extractor_cfgs = [c.get(f'{task}_roi_extractor') for c in cfgs]
            if any(isinstance(e, str) for e in extractor_cfgs):
                self.extractor_alias[task] = self._extractor_source(task, extractor_cfgs)
                continue
            if not (share_roi_extractor or all(e is None for e in extractor_cfgs)):
                stages = sorted(set(branch.stages) | set(branch.test_stages))
                self.add_module(f'{task}_roi_extractor', self._build_extractors(
                    [extractor_cfgs[t] for t in stages], stages))

        self.with_semantic = semantic_head is not None
        self.semantic_fusion = tuple(semantic_fusion)
        if self.with_semantic:
            self.semantic_roi_extractor = MODELS.build(semantic_roi_extractor)
            self.semantic_head = MODELS.build(semantic_head)

        self.assigners, self.samplers = [], []
        if self.stage_train_cfgs is not None:
            self.assigners = [TASK_UTILS.build(c['assigner']) for c in self.stage_train_cfgs]
            self.samplers = [TASK_UTILS.build(c['sampler']) for c in self.stage_train_cfgs]

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _set_num_classes(cfgs, num_classes):
        for cfg in cfgs:
            for key, head in cfg.items():
                task = key[:-len('_head')] if key.endswith('_head') else None
                if not head or task is None:
                    continue
                if task == 'bbox' or TASK_BRANCHES.get(task).predicts_classes:
                    head['num_classes'] = num_classes

    @classmethod
    def declared_num_classes(cls, cfg):
        """``[(key, num_classes)]`` of every class-predicting head this config builds, keys
        relative to the RoI head config: a top-level ``num_classes`` wins over all."""
        if cfg.get('num_classes') is not None:
            return [('num_classes', cfg['num_classes'])]
        keys = ['bbox_head'] + [f'{t}_head' for t in task_names()
                                if TASK_BRANCHES.get(t).predicts_classes]
        found = []
        for key in keys:
            heads = cfg.get(key)
            heads = list(heads) if isinstance(heads, (list, tuple)) else [heads]
            for i, head in enumerate(heads):
                if head and head.get('num_classes') is not None:
                    name = key + (f'[{i}]' if len(heads) > 1 else '')
                    found.append((name + '.num_classes', head['num_classes']))
        for stage, override in (cfg.get('stage_overrides') or {}).items():
            for key in keys:
                head = (override or {}).get(key) or {}
                if head.get('num_classes') is not None:
                    found.append((f'stage_overrides.{stage}.{key}.num_classes',
                                  head['num_classes']))
        return found

    def class_heads(self):
        """``[(name, head)]`` of every head that predicts the dataset's classes."""
        heads = [(f'bbox_head.{t}', h) for t, h in enumerate(self.bbox_head)]
        for branch in self.branches:
            if branch.predicts_classes:
                heads += [(f'{branch.task}_head.{k}', h) for k, h in branch.items()]
        return heads

    def _build_extractors(self, cfgs, stages=None):
        """One extractor module per stage (keyed by stage id), or one for all stages with
        ``share_stage_extractors`` (then their configs must agree)."""
        stages = list(range(len(cfgs))) if stages is None else list(stages)
        if self.share_stage_extractors and cfgs:
            if any(c != cfgs[0] for c in cfgs):
                raise ValueError('share_stage_extractors needs the same extractor config at '
                                 'every stage')
            return nn.ModuleDict({'shared': MODELS.build(cfgs[0])})
        return nn.ModuleDict({str(t): MODELS.build(c) for t, c in zip(stages, cfgs)})

    def _extractor_source(self, task, cfgs):
        """``{task}_roi_extractor='<task>'``: the branch pools with the extractor modules of
        ``'bbox'`` or of a branch built before it (a lower ``order``), getting the very same
        RoI features (context included) without pooling them again."""
        source = cfgs[0]
        if any(c != source for c in cfgs) or not (source == 'bbox' or
                                                  source in self.branch_names):
            raise ValueError(f'{task}_roi_extractor={source!r} must name, at every stage, '
                             "'bbox' or a branch built before this one "
                             f'(built so far: {self.branch_names})')
        return source

    def _stage_train_cfgs(self, train_cfg):
        if isinstance(train_cfg, (list, tuple)):  # MMDetection's per-stage list
            return stage_cfgs(list(train_cfg), None, self.num_sample_stages)
        defaults = {k: v for k, v in train_cfg.items() if k != 'stage_overrides'}
        return stage_cfgs(defaults, train_cfg.get('stage_overrides'), self.num_sample_stages)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MMDetection's Mask R-CNN (StandardRoIHead) names its box head without a stage index.
        if self.num_stages == 1:
            head = f'{prefix}bbox_head.'
            for key in [k for k in state_dict if k.startswith(head)
                        and not k[len(head):].split('.', 1)[0].isdigit()]:
                state_dict[f'{head}0.{key[len(head):]}'] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ parts
    @property
    def branches(self):
        return [getattr(self, f'{t}_head') for t in self.branch_names]

    @property
    def with_mask(self):
        return 'mask' in self.branch_names

    def extractor(self, task, stage):
        """The RoI extractor module of ``task`` ('bbox' or a branch) at ``stage``."""
        task = self.extractor_alias.get(task, task)
        extractors = getattr(self, f'{task}_roi_extractor', None)
        if extractors is None:  # the branch shares the box extractor
            extractors = self.bbox_roi_extractor
            stage = min(stage, self.num_stages - 1)
        return extractors['shared'] if 'shared' in extractors else extractors[str(stage)]

    def roi_features(self, x, batch_data_samples=None):
        """The batch's :class:`RoIFeatures`: level features, image shapes and, for HTC, the
        semantic context. Returns ``(features, semantic logits or None)``."""
        img_shapes = None if batch_data_samples is None else \
            [s.metainfo['img_shape'] for s in batch_data_samples]
        context, seg_logits = None, None
        if self.with_semantic:
            seg_logits, semantic_feat = self.semantic_head(x)
            context = SemanticContext(semantic_feat, self.semantic_roi_extractor,
                                      self.semantic_fusion)
        return RoIFeatures(x, img_shapes, context), seg_logits

    def bbox_forward(self, stage, feats, rois):
        """``(cls_score, bbox_pred, RoI features before context)`` of ``stage``'s box head."""
        feats = as_roi_features(feats)
        raw = feats.raw(self.extractor('bbox', stage), rois)
        cls_score, bbox_pred = self.bbox_head[stage](feats.with_context(raw, rois, 'bbox'))
        return cls_score, bbox_pred, raw

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

    def _box_loss(self, t, feats, samples, img_shapes, refine):
        """Stage ``t``'s box losses; with ``refine``, also the refined boxes (detached) for what
        comes next. Returns ``(losses, refined proposals or None, RoI features, rois)``."""
        head = self.bbox_head[t]
        rois = boxes_to_rois([s.priors for s in samples])
        cls_score, bbox_pred, raw = self.bbox_forward(t, feats, rois)
        targets = bbox_targets(samples, head.num_classes, head.bbox_coder,
                               self.stage_train_cfgs[t].get('pos_weight', -1),
                               head.reg_decoded_bbox)
        losses = head.loss(cls_score, bbox_pred, rois, *targets)
        refined = None
        if refine:
            with torch.no_grad():
                refined = refine_boxes(rois, targets[0], cls_score, bbox_pred,
                                       [s.pos_is_gt for s in samples], head.bbox_coder,
                                       img_shapes, head.num_classes)
        return losses, refined, raw

    def loss(self, x, rpn_results_list, batch_data_samples):
        """Losses ``s{t}.loss_cls / s{t}.acc / s{t}.loss_bbox`` and each branch's
        ``s{t}.loss_<task>`` (+ ``loss_semantic_seg``); every ``loss*`` is already scaled by
        ``stage_loss_weights[t]``."""
        if self.stage_train_cfgs is None:
            raise RuntimeError('CascadeRoIHead.loss needs train_cfg (assigner, sampler)')
        gts, ignores = self._gts(batch_data_samples)
        img_shapes = [s.metainfo['img_shape'] for s in batch_data_samples]
        feats, seg_logits = self.roi_features(x, batch_data_samples)
        losses = {}
        if seg_logits is not None:
            gt_sem = torch.stack([s.gt_sem_seg.sem_seg for s in batch_data_samples])
            losses['loss_semantic_seg'] = self.semantic_head.loss(seg_logits, gt_sem)

        proposals = [r.bboxes.detach() for r in rpn_results_list]
        for t in range(self.num_sample_stages):
            samples = self._assign_and_sample(t, proposals, gts, ignores)
            branches = [b for b in self.branches if t in b.stages]
            stage_losses, raw = {}, None
            if t < self.num_stages:
                refine = t < self.num_stages - 1 or (branches and self.interleaved)
                stage_losses, refined, raw = self._box_loss(t, feats, samples, img_shapes,
                                                            refine)
                proposals = refined if refine else proposals
                if branches and self.interleaved:
                    # HTC: the branches learn on boxes this stage has already regressed.
                    samples, raw = self._assign_and_sample(t, proposals, gts, ignores), None
            if branches:
                stage_losses.update(self._branch_losses(t, branches, feats, samples, gts, raw))
            w = self.stage_loss_weights[t]
            for k, v in stage_losses.items():
                losses[f's{t}.{k}'] = v * w if 'loss' in k else v
        return losses

    def _branch_losses(self, t, branches, feats, samples, gts, raw_box_feats=None):
        pos_rois = boxes_to_rois([s.pos_priors for s in samples])
        losses, shared, pooled = {}, {}, {}
        for branch in branches:
            extractor = self.extractor(branch.task, t)
            if extractor not in pooled:
                if raw_box_feats is not None and extractor is self.extractor('bbox', t):
                    # Positives lead each image's sampled RoIs: reuse their box features.
                    is_pos = torch.cat([torch.arange(len(s.priors)) < len(s.pos_priors)
                                        for s in samples]).to(raw_box_feats.device)
                    pooled[extractor] = raw_box_feats[is_pos]
                else:
                    pooled[extractor] = feats.raw(extractor, pos_rois)
            roi_feats = feats.with_context(pooled[extractor], pos_rois,
                                           self.extractor_alias.get(branch.task, branch.task))
            losses.update(branch.loss(t, roi_feats, samples, gts, shared))
        return losses

    # ------------------------------------------------------------------ inference
    def _refine_rois(self, feats, rois, num_per_img, img_shapes):
        """Run every box stage; returns (class scores, last bbox_pred, last stage's rois)."""
        scores = []
        for t in range(self.num_stages):
            cls_score, bbox_pred, _ = self.bbox_forward(t, feats, rois)
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

    def _detections(self, rois, cls_score, bbox_pred, num_per_img, metas):
        """Decoded, class-wise NMS'd detections per image, in the network input frame."""
        cfg = self.test_cfg or {}
        nms_cfg = cfg_get(cfg, 'nms') or dict(type='nms', iou_threshold=0.5)
        if nms_cfg.get('type', 'nms') != 'nms':
            raise NotImplementedError(f"only nms type 'nms' is supported, got {nms_cfg}")
        head = self.bbox_head[-1]
        results = []
        # float32 island: decoding, softmax scores and NMS (the box head's predictors already
        # ran in float32; under autocast nothing here may drop to bfloat16)
        with float32_island(rois.device.type):
            for r, s, p, meta in zip(rois.split(num_per_img), cls_score.split(num_per_img),
                                     bbox_pred.split(num_per_img), metas):
                k = p.size(1) // 4
                boxes = head.bbox_coder.decode(r[:, 1:].repeat_interleave(k, dim=0),
                                               p.reshape(-1, 4), max_shape=meta['img_shape'])
                det_boxes, det_scores, det_labels = postprocess_detections(
                    boxes.view(r.size(0), 4 * k), F.softmax(s.float(), dim=-1),
                    cfg_get(cfg, 'score_thr', 0.05), nms_cfg.get('iou_threshold', 0.5),
                    cfg_get(cfg, 'max_per_img', 100), cfg_get(cfg, 'min_bbox_size', 0))
                results.append(InstanceData(bboxes=det_boxes, scores=det_scores,
                                            labels=det_labels))
        return results

    def _predict_boxes(self, feats, proposals, metas):
        num_per_img = [len(p) for p in proposals]
        rois = boxes_to_rois(proposals)
        if rois.numel() == 0:
            device = feats[0].device
            return [InstanceData(bboxes=torch.zeros(0, 4, device=device),
                                 scores=torch.zeros(0, device=device),
                                 labels=torch.zeros(0, dtype=torch.long, device=device))
                    for _ in metas]
        cls_score, bbox_pred, rois = self._refine_rois(
            feats, rois, num_per_img, [m['img_shape'] for m in metas])
        return self._detections(rois, cls_score, bbox_pred, num_per_img, metas)

    def predict(self, x, rpn_results_list, batch_data_samples, rescale=True):
        """Per-image ``InstanceData(bboxes, scores, labels[, masks, keypoints, ...])``; with
        ``rescale`` in the original image (``ori_shape``), else in the network input frame.
        With 0 box stages the proposals (which then need ``scores`` and ``labels``) are the
        detections."""
        feats, _ = self.roi_features(x, batch_data_samples)
        metas = [s.metainfo for s in batch_data_samples]
        if self.num_stages:
            results = self._predict_boxes(feats, [r.bboxes for r in rpn_results_list], metas)
        else:
            results = [InstanceData(bboxes=r.bboxes, scores=r.scores, labels=r.labels)
                       for r in rpn_results_list]
        return self._predict_branches(feats, results, metas, rescale)

    def predict_with_given_boxes(self, x, results, batch_data_samples, rescale=True):
        """Run the task branches on boxes from anywhere: ``results`` per image with ``bboxes``
        (network input frame), ``labels`` and ``scores``; returns them with the branches'
        fields, rescaled to ``ori_shape`` when ``rescale``."""
        feats, _ = self.roi_features(x, batch_data_samples)
        results = [InstanceData(**{k: r.get(k) for k in ('bboxes', 'scores', 'labels')})
                   for r in results]
        return self._predict_branches(feats, results, [s.metainfo for s in batch_data_samples],
                                      rescale)

    def _predict_branches(self, feats, results, metas, rescale):
        raw = {}
        if self.branches and sum(len(r) for r in results):
            rois = boxes_to_rois([r.bboxes for r in results])
            labels = torch.cat([r.labels for r in results])
            shared = {}
            for branch in self.branches:
                raw[branch.task] = branch.predict(self.pool_fn(feats, branch.task, rois),
                                                  rois, labels, shared)
        # The one rescale step: boxes to the original image, then each branch's outputs.
        for r, meta in zip(results, metas):
            if rescale:
                r.bboxes = r.bboxes / r.bboxes.new_tensor(meta['scale_factor']).repeat(2)
        for branch in self.branches:
            if branch.task in raw:
                branch.postprocess(results, raw[branch.task], metas, rescale)
            else:
                for r, meta in zip(results, metas):
                    branch.empty_result(r, meta['ori_shape'] if rescale else meta['img_shape'])
        return results

    def pool_fn(self, feats, task, rois):
        """``pool(stage)`` for a branch's ``predict``: the RoI features of ``rois`` for that
        stage's extractor. Every stage of a branch pools the same detections; a stage whose
        extractor module already pooled them reuses its output."""
        source = self.extractor_alias.get(task, task)
        return lambda stage: feats.pool(self.extractor(task, stage), rois, source, cached=True)

    def forward(self, x, rpn_results_list, batch_data_samples):
        """Raw outputs over all proposals (``mode='tensor'``): averaged cls logits, last-stage
        box deltas, refined RoIs and each branch's raw per-RoI output (e.g. mask
        probabilities), for the top-scoring class of each RoI. With 0 box stages: the RoIs of
        the given detections and each branch's output for their labels."""
        feats, _ = self.roi_features(x, batch_data_samples)
        metas = [s.metainfo for s in batch_data_samples]
        proposals = [r.bboxes for r in rpn_results_list]
        if self.num_stages:
            cls_score, bbox_pred, rois = self._refine_rois(
                feats, boxes_to_rois(proposals), [len(p) for p in proposals],
                [m['img_shape'] for m in metas])
            outs = (cls_score, bbox_pred, rois)
            labels = cls_score[:, :-1].argmax(1)
        else:  # given detections: their boxes and labels
            rois = boxes_to_rois(proposals)
            labels = torch.cat([r.labels for r in rpn_results_list])
            outs = (rois, )
        shared = {}
        for branch in self.branches:
            outs += (branch.predict(self.pool_fn(feats, branch.task, rois), rois, labels,
                                    shared),)
        return outs
