"""The keypoint branch (Keypoint R-CNN): heatmap heads on the positive RoIs, one-hot cell
targets, and keypoints decoded from the heatmaps of the final detections."""
import torch

from cascade_seg.registry import TASK_BRANCHES

from ...task_utils import heatmaps_to_keypoints, keypoint_targets
from ...task_utils.augment import keypoints_to_original, per_image
from .base import TaskBranch


@TASK_BRANCHES.register_module(name='keypoint')
class KeypointBranch(TaskBranch):
    """Config keys on the RoI head: ``keypoint_roi_extractor`` (14x14 RoIAlign),
    ``keypoint_head`` (e.g. ``KeypointRCNNHead``, whose ``num_keypoints`` is the one key for
    another skeleton) and ``keypoint_stages`` (default ``'last'``: on a cascade, the keypoints
    learn on the best boxes).

    Ground truth: ``gt_instances.keypoints (G, K, 3)`` (x, y, v). Results get
    ``keypoints (N, K, 2)`` and ``keypoint_scores (N, K)`` (heatmap logits at the peaks).
    """
    task = 'keypoint'
    order = 20
    predicts_classes = False     # one heatmap per keypoint, whatever the box's class
    default_stages = 'last'

    def loss(self, stage, roi_feats, samples, gts, shared):
        head = self.head(stage)
        logits = head(roi_feats)
        size = logits.size(-1)   # the target grid is the head's own output
        cells, valid = [], []
        for s, gt in zip(samples, gts):
            kpts = gt.get('keypoints', None)
            if kpts is None:
                kpts = s.pos_priors.new_zeros((len(gt), head.num_keypoints, 3))
            c, v = keypoint_targets(s.pos_priors, kpts.to(s.pos_priors)[s.pos_gt_inds], size)
            cells.append(c)
            valid.append(v)
        return dict(loss_keypoint=head.loss(logits, torch.cat(cells), torch.cat(valid)))

    def predict(self, pool, rois, labels, shared):
        stage = self.test_stages[-1]
        heatmaps = self.head(stage)(pool(stage))
        return heatmaps_to_keypoints(heatmaps, rois[:, 1:])

    def postprocess(self, results, raw, metas, rescale):
        sizes = [len(r) for r in results]
        for r, xy, scores, meta in zip(results, raw[0].split(sizes), raw[1].split(sizes), metas):
            if rescale:
                xy = xy / xy.new_tensor(meta['scale_factor'])
            r.keypoints = xy
            r.keypoint_scores = scores

    def deaugment(self, raw, metas, num_per_img):
        xy, scores = raw
        parts = [keypoints_to_original(xy[sl], scores[sl], m)
                 for sl, m in zip(per_image(num_per_img), metas)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def empty_result(self, result, shape):
        k = self.head(self.test_stages[-1]).num_keypoints
        result.keypoints = result.bboxes.new_zeros((0, k, 2))
        result.keypoint_scores = result.bboxes.new_zeros((0, k))
