"""ONNX export of the two-stage detectors (Mask R-CNN, Cascade Mask R-CNN, HTC with or without
the semantic branch), and running the exported graph with onnxruntime.

Inside the graph (one image, any size divisible by the size divisor, traced by torch's
TorchScript exporter, opset 17):

* backbone and FPN;
* RPN: its convs, anchors for the feature sizes of the input, per-level top ``nms_pre``,
  delta decoding, clipping to ``img_shape``, small-box filter, NMS per level
  (``NonMaxSuppression``), the best ``max_per_img``;
* every box stage: RoIAlign per pyramid level (``RoiAlign``, ``half_pixel`` = torchvision's
  ``aligned=True``, adaptive sampling), HTC's semantic context, the box head, the refinement
  with each RoI's predicted class; the classifier scores averaged over stages;
* the detections: per-class decoding, score threshold, class-wise NMS, ``max_per_img``;
* every mask head on the detections (HTC's mask information flow, the stage average) giving
  each detection's ``M x M`` mask probabilities for its class.

Outside (``preprocess`` / ``postprocess``, numpy + one torch call): resizing, normalising and
padding the image; dividing the boxes by the resize factor; pasting the ``M x M``
probabilities into the original image and thresholding them (``paste_masks``, the same
function as ``model.predict``). Pasting is a per-detection resample into an image-sized
canvas whose size differs per image; it is cheap outside and would make the graph's output
size image-dependent.

The exported module, :class:`RCNNExportModel`, reuses the detector's modules and
reimplements only the control flow of inference without Python decisions on tensor values
(the tracer would freeze them): the per-level top-k takes ``min(k, n)`` as a tensor, the
RoI pooling visits every level whatever RoIs it has, NMS is ``torchvision.ops.batched_nms``.
Its output equals ``model.predict`` (tests/test_export_onnx.py).
"""
import os.path as osp
import warnings

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

__all__ = ['RCNNExportModel', 'export_onnx', 'preprocess', 'postprocess', 'OnnxDetector',
           'OPSET']

OPSET = 17
OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'mask_probs')


def _clip(boxes, img_shape):
    """Clip ``(N, 4k)`` boxes to ``img_shape`` = (h, w) given as a tensor."""
    hw = img_shape.to(boxes.dtype)
    upper = torch.stack([hw[1], hw[0]]).repeat(boxes.size(-1) // 2)
    return torch.minimum(boxes.clamp(min=0), upper)


def _topk(x, k):
    """``x.topk(min(k, len(x)))`` with the minimum taken on tensors: traced, ``len(x)`` stays
    the input's size instead of becoming a constant."""
    return x.topk(torch.clamp(torch.tensor(k), max=x.shape[0]), sorted=True)


class RCNNExportModel(nn.Module):
    """A built ``GeneralizedRCNN`` with an RPN and a ``CascadeRoIHead`` (box stages >= 1, mask
    branch optional) as a traceable function of one image.

    ``forward(image (1, 3, H, W) float, normalised and padded, img_shape (2,) int64 = the
    resized image's (h, w) before padding)`` -> ``boxes (N, 4)`` in the resized image,
    ``scores (N,)``, ``labels (N,)`` int64, ``mask_probs (N, M, M)`` of each box's class.
    """

    def __init__(self, detector):
        super().__init__()
        head = detector.roi_head
        if detector.proposal_generator is None or type(detector.proposal_generator).__name__ \
                != 'RPNHead':
            raise NotImplementedError('ONNX export covers detectors with an RPNHead')
        if head is None or head.num_stages < 1:
            raise NotImplementedError('ONNX export needs a RoI head with box stages')
        unknown = [b.task for b in head.branches if b.task != 'mask']
        if unknown:
            raise NotImplementedError(f'ONNX export covers the mask branch, not {unknown}')
        for name, module in head.named_modules():
            if getattr(module, 'gc_context', False) or type(module).__name__ == \
                    'AllLevelRoIExtractor':
                raise NotImplementedError(f'ONNX export does not cover {name} '
                                          f'({type(module).__name__})')
        self.detector = detector.eval()
        self.rpn_cfg = dict(detector.test_cfg.get('rpn') or {})
        self.rcnn_cfg = dict(detector.test_cfg.get('rcnn') or {})

    # ------------------------------------------------------------------ pieces
    def _pool(self, extractor, feats, rois):
        """``SingleRoIExtractor.forward`` without its per-level ``if`` (every level is
        visited; an empty one pools nothing)."""
        feats = feats[:extractor.num_inputs]
        if len(feats) == 1:
            return extractor.roi_layers[0](feats[0], rois)
        levels = extractor.map_roi_levels(rois, len(feats))
        pooled, order = [], []
        for lvl, feat in enumerate(feats):
            inds = torch.nonzero(levels == lvl).reshape(-1)
            pooled.append(extractor.roi_layers[lvl](feat, rois[inds]).to(feats[0].dtype))
            order.append(inds)
        # back to the RoIs' order with one gather (an index_put traced on a level holding one
        # RoI would be specialised to that size)
        return torch.cat(pooled)[torch.argsort(torch.cat(order))]

    def _roi_feats(self, task, stage, feats, rois, context):
        head = self.detector.roi_head
        pooled = self._pool(head.extractor(task, stage), feats, rois)
        return pooled if context is None else context(pooled, rois, task)

    def _proposals(self, feats, img_shape):
        rpn, cfg = self.detector.proposal_generator, self.rpn_cfg
        if cfg.get('nms_across_levels', False) or \
                cfg.get('filter_small_boxes_mode', 'mmdet') != 'mmdet':
            raise NotImplementedError('ONNX export: RPN with nms_across_levels or the '
                                      'torchvision small-box filter')
        cls_scores, bbox_preds = rpn(feats)
        nms_pre = cfg.get('nms_pre') or -1
        logits, boxes, levels = [], [], []
        for lvl, (score, pred) in enumerate(zip(cls_scores, bbox_preds)):
            anchors = rpn.prior_generator.single_level_grid_priors(
                score.shape[-2:], lvl, dtype=score.dtype, device=score.device)
            lg = score[0].permute(1, 2, 0).reshape(-1)
            dl = pred[0].permute(1, 2, 0).reshape(-1, 4)
            if nms_pre > 0:
                lg, idx = _topk(lg, nms_pre)
            else:
                lg, idx = lg.sort(descending=True)
            logits.append(lg)
            boxes.append(rpn.bbox_coder.decode(anchors[idx], dl[idx], max_shape=None))
            levels.append(torch.full_like(idx, lvl))
        scores = torch.cat(logits).float().sigmoid()
        boxes = torch.cat(boxes)
        if getattr(rpn.bbox_coder, 'clip_border', True):
            boxes = _clip(boxes, img_shape)
        levels = torch.cat(levels)
        keep = torch.ones_like(scores, dtype=torch.bool)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size is not None and min_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = keep & (wh > min_size).all(dim=1)
        if cfg.get('score_thr') is not None:
            keep = keep & (scores > cfg['score_thr'])
        kept = torch.nonzero(keep).reshape(-1)
        nms = cfg.get('nms') or {}
        order = kept[batched_nms(boxes[kept], scores[kept], levels[kept],
                                 nms.get('iou_threshold', nms.get('iou_thr', 0.7)))]
        max_per_img = cfg.get('max_per_img', 1000)
        if max_per_img is not None and max_per_img > 0:
            order = order[:max_per_img]
        return boxes[order]

    def _context(self, feats):
        head = self.detector.roi_head
        if not head.with_semantic:
            return None
        from cascade_seg.models.roi_heads.roi_features import SemanticContext
        _, semantic_feat = head.semantic_head(feats)
        return SemanticContext(semantic_feat, head.semantic_roi_extractor, head.semantic_fusion)

    def _boxes(self, feats, proposals, img_shape, context):
        """The box cascade and the detections (``CascadeRoIHead._refine_rois`` +
        ``_detections`` for one image)."""
        from cascade_seg.models.roi_heads.bbox_heads import select_class_deltas
        head, cfg = self.detector.roi_head, self.rcnn_cfg
        rois = torch.cat([proposals.new_zeros((proposals.size(0), 1)), proposals], dim=1)
        scores, bbox_pred = [], None
        for t in range(head.num_stages):
            cls_score, bbox_pred = head.bbox_head[t](self._roi_feats('bbox', t, feats, rois,
                                                                     context))
            scores.append(cls_score)
            if t < head.num_stages - 1:
                bh = head.bbox_head[t]
                labels = cls_score[:, :bh.num_classes].argmax(1)
                boxes = bh.bbox_coder.decode(rois[:, 1:], select_class_deltas(bbox_pred, labels),
                                             max_shape=None)
                rois = torch.cat([rois[:, :1], _clip(boxes, img_shape)], dim=1)
        cls_score = sum(scores) / float(len(scores)) if head.score_average == 'mean' \
            else scores[-1]
        last = head.bbox_head[-1]
        k = bbox_pred.size(1) // 4
        boxes = last.bbox_coder.decode(rois[:, 1:].repeat_interleave(k, dim=0),
                                       bbox_pred.reshape(-1, 4), max_shape=None)
        boxes = _clip(boxes, img_shape).reshape(rois.size(0), 4 * k)
        probs = torch.softmax(cls_score, dim=-1)[:, :-1]
        num_classes = probs.size(1)
        boxes = boxes.reshape(-1, k, 4).expand(-1, num_classes, 4) if k == 1 else \
            boxes.reshape(-1, num_classes, 4)
        labels = torch.arange(num_classes, device=probs.device).expand_as(probs)
        boxes, probs, labels = boxes.reshape(-1, 4), probs.reshape(-1), labels.reshape(-1)
        valid = probs > cfg.get('score_thr', 0.05)
        if (cfg.get('min_bbox_size') or 0) > 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            valid = valid & (wh[:, 0] > cfg['min_bbox_size']) & (wh[:, 1] > cfg['min_bbox_size'])
        inds = torch.nonzero(valid).reshape(-1)
        boxes, probs, labels = boxes[inds], probs[inds], labels[inds]
        nms = cfg.get('nms') or dict(type='nms', iou_threshold=0.5)
        keep = batched_nms(boxes, probs, labels, nms.get('iou_threshold', 0.5))
        max_per_img = cfg.get('max_per_img', 100)
        if max_per_img > 0:
            keep = keep[:max_per_img]
        return boxes[keep], probs[keep], labels[keep]

    def forward(self, image, img_shape):
        det = self.detector
        feats = tuple(f.contiguous() for f in det.extract_feat(image))
        context = self._context(feats)
        boxes, scores, labels = self._boxes(feats, self._proposals(feats, img_shape), img_shape,
                                            context)
        head = det.roi_head
        if not head.with_mask:
            return boxes, scores, labels
        rois = torch.cat([boxes.new_zeros((boxes.size(0), 1)), boxes], dim=1)
        mask = head.mask_head  # the mask branch; its predict only calls pool(stage)
        probs = mask.predict(lambda t: self._roi_feats('mask', t, feats, rois, context), rois,
                             labels, {})
        return boxes, scores, labels, probs


# ---------------------------------------------------------------------- outside the graph
def _pipeline_settings(cfg):
    """Resize and normalisation settings of the config's test pipeline and preprocessor."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = next((t for t in pipeline if t['type'] == 'Resize'), None)
    pre = cfg.model.get('data_preprocessor') or {}
    return dict(scale=tuple(resize['scale']) if resize else None,
                keep_ratio=resize.get('keep_ratio', True) if resize else True,
                mean=np.asarray(pre.get('mean', (0., 0., 0.)), np.float32),
                std=np.asarray(pre.get('std', (1., 1., 1.)), np.float32),
                bgr_to_rgb=bool(pre.get('bgr_to_rgb', False)),
                size_divisor=int(pre.get('pad_size_divisor', 1) or 1),
                pad_value=float(pre.get('pad_value', 0)))


def preprocess(img_bgr, settings):
    """An image (H, W, 3) uint8 BGR as the test pipeline and data preprocessor make it:
    resized (cv2, bilinear, the test pipeline's scale), normalised, padded to the size divisor.
    Returns ``(input (1, 3, Hp, Wp) float32, img_shape (2,) int64, scale_factor (w, h))``."""
    from cascade_seg.datasets.transforms.transforms import rescale_size
    h, w = img_bgr.shape[:2]
    if settings['scale'] is not None:
        new_w, new_h = rescale_size(w, h, settings['scale']) if settings['keep_ratio'] \
            else settings['scale']
        img = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:
        img, new_w, new_h = img_bgr, w, h
    x = img.astype(np.float32)
    if settings['bgr_to_rgb']:
        x = x[..., ::-1]
    x = (x - settings['mean']) / settings['std']
    d = settings['size_divisor']
    ph, pw = -(-new_h // d) * d, -(-new_w // d) * d
    out = np.full((ph, pw, 3), settings['pad_value'], np.float32)
    out[:new_h, :new_w] = x
    return (np.ascontiguousarray(out.transpose(2, 0, 1)[None]),
            np.asarray([new_h, new_w], np.int64), (new_w / w, new_h / h))


def postprocess(outputs, scale_factor, ori_shape, mask_thr=0.5, mask_paste='grid_sample'):
    """The graph's outputs -> ``dict(bboxes, scores, labels, masks)`` in the original image:
    boxes divided by the resize factor, mask probabilities pasted (``paste_masks``, as
    ``model.predict`` does) and thresholded."""
    from cascade_seg.models.task_utils import paste_masks
    boxes, scores, labels = (np.asarray(o) for o in outputs[:3])
    sw, sh = scale_factor
    boxes = boxes / np.asarray([sw, sh, sw, sh], np.float32)
    out = dict(bboxes=boxes, scores=scores, labels=labels.astype(np.int64))
    if len(outputs) > 3:
        masks = paste_masks(torch.from_numpy(np.asarray(outputs[3])), torch.from_numpy(boxes),
                            ori_shape[:2], threshold=mask_thr, mode=mask_paste)
        out['masks'] = masks.numpy()
    return out


def export_onnx(model, cfg, out_file, example_img=None, opset=OPSET, check=True):
    """Trace :class:`RCNNExportModel` of ``model`` on ``example_img`` (BGR uint8; default a
    seeded random image at the test scale) and write ``out_file`` with dynamic image height
    and width and a dynamic number of detections. Returns the output names."""
    settings = _pipeline_settings(cfg)
    if example_img is None:
        rng = np.random.default_rng(0)
        size = settings['scale'] or (512, 512)
        example_img = rng.integers(0, 256, (min(size), max(size), 3), dtype=np.uint8)
    x, img_shape, _ = preprocess(example_img, settings)
    wrapper = RCNNExportModel(model).eval()
    names = OUTPUT_NAMES if model.roi_head.with_mask else OUTPUT_NAMES[:3]
    dynamic = {'image': {2: 'height', 3: 'width'}}
    dynamic.update({n: {0: 'num_dets'} for n in names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # tracer warnings about traced sizes, the exporter's
        torch.onnx.export(wrapper, (torch.from_numpy(x), torch.from_numpy(img_shape)), out_file,
                          dynamo=False, opset_version=opset, input_names=['image', 'img_shape'],
                          output_names=list(names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    if check:
        import onnx
        onnx.checker.check_model(onnx.load(out_file))
    return names


class OnnxDetector:
    """An exported graph in onnxruntime with the pre- and post-processing around it.

    ``OnnxDetector(onnx_file, cfg)(img_bgr)`` -> ``dict(bboxes, scores, labels, masks)`` in
    the original image (numpy)."""

    def __init__(self, onnx_file, cfg, providers=('CPUExecutionProvider', ), threads=None):
        import onnxruntime as ort
        if not osp.isfile(onnx_file):
            raise FileNotFoundError(onnx_file)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self.session = ort.InferenceSession(onnx_file, options, providers=list(providers))
        self.settings = _pipeline_settings(cfg)
        rcnn = (cfg.model.get('test_cfg') or {}).get('rcnn') or {}
        self.mask_thr = rcnn.get('mask_thr_binary', 0.5)
        self.mask_paste = rcnn.get('mask_paste', 'grid_sample')

    def run_raw(self, img_bgr):
        x, img_shape, scale = preprocess(img_bgr, self.settings)
        return self.session.run(None, {'image': x, 'img_shape': img_shape}), scale

    def __call__(self, img_bgr):
        outputs, scale = self.run_raw(img_bgr)
        return postprocess(outputs, scale, img_bgr.shape[:2], self.mask_thr, self.mask_paste)
