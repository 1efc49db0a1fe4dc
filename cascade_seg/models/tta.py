"""Test-time augmentation for every detector: ``DetTTAModel`` (MMDetection 3's name) wraps a
built detector and merges its predictions over the augmented copies that ``TestTimeAug`` makes
(several scales, horizontal / vertical flips).

For the detectors with a RoI head (Mask R-CNN, Cascade, HTC, Keypoint R-CNN, CenterMask) it
works in two passes, as MMDetection 2's ``aug_test`` of Mask R-CNN did, for every stage and
branch:

1. **boxes**: each copy's detections (after the box cascade, or CenterMask's FCOS), mapped
   back to the original image (un-flipped in the copy's frame, divided by its scale factor);
   all copies' detections merged per class, by NMS (the kept box is the top-scoring one) or
   ``'weighted'`` (the kept box is the score-weighted mean of the boxes it suppressed, itself
   included); at most ``max_per_img``, scores are the kept detections' own;
2. **branches** on the merged boxes, in every copy: the boxes are mapped into the copy (scaled
   and flipped), the task branches run on that copy's features, and their per-RoI outputs are
   brought back and averaged: mask probabilities (M x M, un-flipped: a horizontal flip of the
   image is a horizontal flip of each RoI's grid), mask-IoU predictions, keypoints (un-flipped
   and left/right swapped with the sample's ``flip_indices``, divided by the scale) and their
   scores. The averaged mask probabilities are pasted once into the original image with the
   merged boxes and thresholded at ``mask_thr_binary``.

One-stage detectors without a RoI head (FCOS) get step 1 only.
"""
import torch
from mmengine.model import BaseTTAModel
from mmengine.structures import InstanceData
from torchvision.ops import batched_nms, box_iou

from cascade_seg.registry import MODELS

from .task_utils import boxes_to_rois
from .task_utils.augment import boxes_to_augmented, boxes_to_original

__all__ = ['DetTTAModel', 'merge_detections']

MERGE_MODES = ('nms', 'weighted')


def merge_detections(boxes, scores, labels, iou_threshold=0.5, max_per_img=100, mode='nms'):
    """Merge the detections of several copies (original frame): class-wise NMS, the best
    ``max_per_img`` kept, sorted by score. ``mode='weighted'``: each kept box becomes the
    score-weighted mean of the boxes it suppresses (itself included). Returns ``(boxes, scores,
    labels)``."""
    if mode not in MERGE_MODES:
        raise ValueError(f'merge mode must be one of {MERGE_MODES}, got {mode!r}')
    if boxes.numel() == 0:
        return boxes, scores, labels
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    if max_per_img > 0:
        keep = keep[:max_per_img]
    out_boxes = boxes[keep]
    if mode == 'weighted':
        # every detection joins the best-scoring kept box of its class it overlaps enough,
        # which is the one that suppressed it in NMS
        iou = box_iou(boxes[keep].float(), boxes.float())                  # (K, N)
        member = (iou > iou_threshold) & (labels[keep][:, None] == labels[None])
        member[torch.arange(len(keep)), keep] = True
        first = torch.where(member.any(0), member.float().argmax(0), -1)  # kept index per det
        weights = torch.zeros_like(iou)
        has = first >= 0
        weights[first[has], torch.nonzero(has).flatten()] = scores[has].float()
        out_boxes = (weights @ boxes.float()) / weights.sum(1, keepdim=True).clamp(min=1e-12)
        out_boxes = out_boxes.to(boxes.dtype)
    return out_boxes, scores[keep], labels[keep]


@MODELS.register_module()
class DetTTAModel(BaseTTAModel):
    """Merge a detector's predictions over test-time augmented copies (see the module).

    Args:
        module: the detector (config or module).
        tta_cfg: ``nms=dict(type='nms', iou_threshold=0.5)``, ``max_per_img=100``,
            ``merge='nms' | 'weighted'`` (the box merge), ``mask_thr_binary`` (default: the
            detector's ``test_cfg.rcnn``, else 0.5).
    """

    def __init__(self, module, tta_cfg=None, data_preprocessor=None):
        if isinstance(module, dict):  # our registry (mmengine's root one lacks our types)
            module = MODELS.build(module)
        super().__init__(module=module, data_preprocessor=data_preprocessor)
        self.tta_cfg = dict(tta_cfg or {})
        nms = self.tta_cfg.get('nms') or dict(type='nms', iou_threshold=0.5)
        if nms.get('type', 'nms') != 'nms':
            raise NotImplementedError(f"tta_cfg.nms type must be 'nms', got {nms}")
        self.iou_threshold = float(nms.get('iou_threshold', 0.5))
        self.max_per_img = int(self.tta_cfg.get('max_per_img', 100))
        self.merge_mode = self.tta_cfg.get('merge', 'nms')
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f'tta_cfg.merge must be one of {MERGE_MODES}, got '
                             f'{self.merge_mode!r}')

    @property
    def dataset_meta(self):
        return getattr(self.module, 'dataset_meta', None)

    def merge_preds(self, data_samples_list):
        """mmengine's hook: merge predictions made elsewhere (boxes only; masks need the
        two passes of :meth:`test_step`)."""
        out = []
        for samples in data_samples_list:
            dets = []
            for s in samples:
                pred = s.pred_instances
                meta = dict(s.metainfo, img_shape=s.metainfo['ori_shape'], scale_factor=(1, 1))
                dets.append(InstanceData(bboxes=boxes_to_original(pred.bboxes, meta),
                                         scores=pred.scores, labels=pred.labels))
            result = self._merge_boxes(dets)
            sample = samples[0]
            sample.pred_instances = result
            out.append(sample)
        return out

    # ------------------------------------------------------------------ test step
    def test_step(self, data):
        """``data``: ``{'inputs': [aug][image], 'data_samples': [aug][image]}`` (what
        ``TestTimeAug`` + ``pseudo_collate`` give). Returns one sample per image (its first
        copy's, with the merged ``pred_instances``)."""
        if isinstance(data, dict):
            num_augs = len(data['inputs'])
            augs = [{k: v[j] for k, v in data.items()} for j in range(num_augs)]
        else:
            augs = [[d[j] for d in data] for j in range(len(data[0]))]
        module = self.module
        if getattr(module, 'roi_head', None) is None:
            preds = [module.test_step(a) for a in augs]
            return self.merge_preds(list(zip(*preds)))
        passes = []
        for aug in augs:
            batch = module.data_preprocessor(aug, False)
            passes.append(self._first_pass(batch['inputs'], batch['data_samples']))
        num_imgs = len(passes[0]['samples'])
        results = []
        for i in range(num_imgs):
            dets = [InstanceData(bboxes=boxes_to_original(p['dets'][i].bboxes, p['metas'][i]),
                                 scores=p['dets'][i].scores, labels=p['dets'][i].labels)
                    for p in passes]
            results.append(self._merge_boxes(dets))
        self._second_pass(passes, results)
        out = []
        for i, result in enumerate(results):
            sample = passes[0]['samples'][i]
            sample.pred_instances = result
            out.append(sample)
        return out

    def _merge_boxes(self, dets):
        boxes = torch.cat([d.bboxes for d in dets])
        scores = torch.cat([d.scores for d in dets])
        labels = torch.cat([d.labels for d in dets])
        boxes, scores, labels = merge_detections(boxes, scores, labels, self.iou_threshold,
                                                 self.max_per_img, self.merge_mode)
        return InstanceData(bboxes=boxes, scores=scores, labels=labels)

    @torch.no_grad()
    def _first_pass(self, inputs, samples):
        """One copy: features, RoI-head features (HTC: with the semantic context) and the
        detections in the copy's network-input frame."""
        module = self.module
        x = module.extract_feat(inputs)
        feats = tuple(f.contiguous() for f in x)
        proposals = module._proposals(x, samples)
        roi_head = module.roi_head
        roi_feats, _ = roi_head.roi_features(feats, samples)
        metas = [s.metainfo for s in samples]
        if roi_head.num_stages:
            dets = roi_head._predict_boxes(roi_feats, [p.bboxes for p in proposals], metas)
        else:  # CenterMask: the proposal generator's detections
            dets = [InstanceData(bboxes=p.bboxes, scores=p.scores, labels=p.labels)
                    for p in proposals]
        return dict(samples=samples, metas=metas, roi_feats=roi_feats, dets=dets)

    @torch.no_grad()
    def _second_pass(self, passes, results):
        """Every branch on the merged boxes in every copy, outputs averaged, then the
        branches' own post-processing in the original image."""
        roi_head = self.module.roi_head
        branches = roi_head.branches
        if not branches:
            return
        num_per_img = [len(r) for r in results]
        metas_orig = [dict(ori_shape=p_meta['ori_shape'], img_shape=p_meta['ori_shape'],
                           scale_factor=(1.0, 1.0)) for p_meta in passes[0]['metas']]
        if sum(num_per_img) == 0:
            for branch in branches:
                for r, meta in zip(results, metas_orig):
                    branch.empty_result(r, meta['ori_shape'])
            return
        labels = torch.cat([r.labels for r in results])
        sums = {}
        for p in passes:
            rois = boxes_to_rois([boxes_to_augmented(r.bboxes, m)
                                 for r, m in zip(results, p['metas'])])
            shared = {}
            for branch in branches:
                raw = branch.predict(roi_head.pool_fn(p['roi_feats'], branch.task, rois), rois,
                                     labels, shared)
                raw = branch.deaugment(raw, p['metas'], num_per_img)
                if branch.task not in sums:
                    sums[branch.task] = raw
                else:
                    prev = sums[branch.task]
                    sums[branch.task] = tuple(a + b for a, b in zip(prev, raw)) \
                        if isinstance(raw, tuple) else prev + raw
        n = float(len(passes))
        for branch in branches:
            total = sums[branch.task]
            mean = tuple(t / n for t in total) if isinstance(total, tuple) else total / n
            # boxes and outputs are in the original image: paste / rescale there
            branch.postprocess(results, mean, metas_orig, rescale=True)
