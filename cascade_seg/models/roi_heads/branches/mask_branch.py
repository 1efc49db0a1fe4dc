"""The mask branch: per-class mask heads on the cascade's stages (Mask R-CNN's at one stage;
Cascade Mask R-CNN's at the first / last / every stage or one shared head; HTC's chained by the
mask information flow), their targets and loss, test-time averaging and pasting."""
import torch

from cascade_seg.registry import TASK_BRANCHES

from ...task_utils import mask_targets, paste_masks
from ...task_utils.augment import flip_direction, per_image, unflip_grid
from .base import TaskBranch


@TASK_BRANCHES.register_module(name='mask')
class MaskBranch(TaskBranch):
    """Config keys on the RoI head: ``mask_roi_extractor``, ``mask_head``, ``mask_stages``
    (``'all' | 'first' | 'last' | 'shared' | [ids]``), ``mask_info_flow`` (HTC: each mask head
    adds the earlier heads' features through its 1x1 ``conv_res``) and ``mask_average``
    (test time: ``'all'`` averages the probabilities of every stage's head, ``'last'`` keeps
    the last one's, as MMDetection's HTC does).

    Training options in the RoI head's ``train_cfg``: ``soft_mask_target`` (keep RoIAlign's
    fractional targets instead of binarising at 0.5). Test options in its ``test_cfg``:
    ``mask_thr_binary`` (0.5) and ``mask_paste`` (``'grid_sample'`` or ``'torchvision'``).
    Results get ``masks (N, H, W) bool``.
    """
    task = 'mask'
    order = 0

    def __init__(self, head_cfgs, stages='all', info_flow=False, average='all', **kwargs):
        if average not in ('all', 'last'):
            raise ValueError(f"mask_average must be 'all' or 'last', got {average!r}")
        if stages == 'shared' and info_flow:
            raise ValueError('mask_info_flow chains a different mask head per stage; '
                             "it cannot be combined with mask_stages='shared'")
        self.info_flow = info_flow
        self.average = average
        super().__init__(head_cfgs, stages, **kwargs)

    def head_cfg(self, stage, cfg):
        if self.info_flow:
            # Every mask head but the first takes the previous one's feature.
            cfg = dict(cfg, with_conv_res=cfg.get('with_conv_res', stage != self.head_stages[0]))
        return cfg

    @property
    def test_stages(self):
        return self.head_stages

    def logits(self, stage, roi_feats):
        """Logits of ``stage``'s mask head; with info flow, the earlier heads feed it."""
        res_feat = None
        if self.info_flow:
            for s in self.head_stages:
                if s >= stage:
                    break
                res_feat = self.head(s)(roi_feats, res_feat, return_logits=False)
        return self.head(stage)(roi_feats, res_feat)

    def loss(self, stage, roi_feats, samples, gts, shared):
        logits = self.logits(stage, roi_feats)
        binarize = not (self.train_cfgs[stage] or {}).get('soft_mask_target', False)
        # The target size is the logits' own (28 for the FCN head, mask_size for the MLP head).
        targets = torch.cat([mask_targets(s.pos_priors, s.pos_gt_inds, gt.masks, logits.size(-1),
                                          binarize=binarize)
                             for s, gt in zip(samples, gts)]).to(logits.device)  # float32
        labels = torch.cat([s.pos_gt_labels for s in samples]).long()
        shared.update(mask_logits=logits, mask_targets=targets, mask_labels=labels)
        return dict(loss_mask=self.head(stage).loss(logits, targets, labels))

    def predict(self, pool, rois, labels, shared):
        """Foreground probabilities ``(K, M, M)`` of each RoI's class, averaged over the
        test stages (or the last one's)."""
        stages = self.test_stages
        if self.average == 'last' and not self.info_flow:
            stages = stages[-1:]
        probs, res_feat = [], None
        for t in stages:
            head, feats = self.head(t), pool(t)
            if self.info_flow and self.average == 'last' and t != stages[-1]:
                # only the last mask is used: earlier heads just pass their feature on
                res_feat = head(feats, res_feat, return_logits=False)
                continue
            if self.info_flow:
                logits, res_feat = head(feats, res_feat, return_feat=True)
            else:
                logits = head(feats)
            probs.append(head.mask_probs(logits, labels))
        probs = probs[-1] if self.average == 'last' else sum(probs) / float(len(probs))
        shared['mask_probs'] = probs
        return probs

    def postprocess(self, results, raw, metas, rescale):
        thr = self.test_cfg.get('mask_thr_binary', 0.5)
        mode = self.test_cfg.get('mask_paste', 'grid_sample')
        for r, p, meta in zip(results, raw.split([len(r) for r in results]), metas):
            shape = meta['ori_shape'] if rescale else meta['img_shape']
            if len(r) == 0:
                self.empty_result(r, shape)
            else:
                r.masks = paste_masks(p, r.bboxes, shape, threshold=thr, mode=mode)

    def deaugment(self, raw, metas, num_per_img):
        # per-RoI probabilities on the RoI's own grid: only a flip needs undoing
        return torch.cat([unflip_grid(raw[sl], flip_direction(m))
                          for sl, m in zip(per_image(num_per_img), metas)])

    def empty_result(self, result, shape):
        result.masks = torch.zeros((0, *shape[:2]), dtype=torch.bool,
                                   device=result.bboxes.device)
