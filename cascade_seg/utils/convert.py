"""Checkpoint key mappings: torchvision Mask R-CNN and MMDetection 3.x -> cascade_seg.

Every function here is a pure ``dict -> dict`` transform on state dicts, so each step can be
tested on key lists alone. The torchvision conversion goes through MMDetection's names
(``torchvision_to_mmdet``), then the MMDetection -> cascade_seg step (``mmdet_to_cascade``),
which only differs from the identity in the RoI head's stage layout.
"""
import pickle
import re
from collections import OrderedDict

import torch

__all__ = ['torchvision_to_mmdet', 'mmdet_to_cascade', 'convert_torchvision', 'convert_mmdet',
           'select_classes', 'COCO80_CATEGORY_IDS', 'align_to_model', 'load_state_dict_file',
           'ConversionReport']

# The 80 COCO category ids in use (torchvision's 91-way classifier has one slot per id 0..90,
# background at 0 and 10 ids never used).
COCO80_CATEGORY_IDS = tuple(i for i in range(1, 91)
                            if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


# ----------------------------------------------------------------------------- torchvision

# (pattern, replacement) applied with re.fullmatch, first match wins. Both torchvision naming
# generations are accepted: the old checkpoints (``inner_blocks.0.weight``,
# ``rpn.head.conv.weight``, ``mask_head.mask_fcn1.weight``) and the Conv2dNormActivation ones
# (``.0.0.weight``).
_TV_RULES = [
    (r'backbone\.body\.(.+)', r'backbone.\1'),
    (r'backbone\.fpn\.inner_blocks\.(\d+)(?:\.0)?\.(weight|bias)',
     r'neck.lateral_convs.\1.conv.\2'),
    (r'backbone\.fpn\.layer_blocks\.(\d+)(?:\.0)?\.(weight|bias)', r'neck.fpn_convs.\1.conv.\2'),
    (r'rpn\.head\.conv(?:\.0\.0)?\.(weight|bias)', r'rpn_head.rpn_conv.\1'),
    (r'rpn\.head\.cls_logits\.(weight|bias)', r'rpn_head.rpn_cls.\1'),
    (r'rpn\.head\.bbox_pred\.(weight|bias)', r'rpn_head.rpn_reg.\1'),
    (r'roi_heads\.box_head\.fc6\.(weight|bias)', r'roi_head.bbox_head.shared_fcs.0.\1'),
    (r'roi_heads\.box_head\.fc7\.(weight|bias)', r'roi_head.bbox_head.shared_fcs.1.\1'),
    (r'roi_heads\.box_predictor\.cls_score\.(weight|bias)', r'roi_head.bbox_head.fc_cls.\1'),
    (r'roi_heads\.box_predictor\.bbox_pred\.(weight|bias)', r'roi_head.bbox_head.fc_reg.\1'),
    (r'roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)', r'roi_head.mask_head.upsample.\1'),
    (r'roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)',
     r'roi_head.mask_head.conv_logits.\1'),
    (r'roi_heads\.keypoint_predictor\.kps_score_lowres\.(weight|bias)',
     r'roi_head.keypoint_head.deconv.\1'),
]
_TV_MASK_CONV_NEW = re.compile(r'roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)')
_TV_MASK_CONV_OLD = re.compile(r'roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)')
# Keypoint head: a Sequential of (conv, ReLU) pairs, or conv_fcn1..8 in old checkpoints.
_TV_KPT_CONV_NEW = re.compile(r'roi_heads\.keypoint_head\.(\d+)\.(weight|bias)')
_TV_KPT_CONV_OLD = re.compile(r'roi_heads\.keypoint_head\.conv_fcn(\d+)\.(weight|bias)')


def _tv_key(key):
    """MMDetection name of one torchvision key, or None when it has no counterpart."""
    m = _TV_MASK_CONV_NEW.fullmatch(key)
    if m:
        return f'roi_head.mask_head.convs.{m[1]}.conv.{m[2]}'
    m = _TV_MASK_CONV_OLD.fullmatch(key)
    if m:  # mask_fcn1..4 are 1-based
        return f'roi_head.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}'
    m = _TV_KPT_CONV_NEW.fullmatch(key)
    if m:  # every other module of the Sequential is a ReLU
        return f'roi_head.keypoint_head.convs.{int(m[1]) // 2}.conv.{m[2]}'
    m = _TV_KPT_CONV_OLD.fullmatch(key)
    if m:
        return f'roi_head.keypoint_head.convs.{int(m[1]) - 1}.conv.{m[2]}'
    for pattern, repl in _TV_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _background_last(t):
    """Classifier rows: torchvision puts background first, MMDetection/cascade_seg last."""
    return torch.cat([t[1:], t[:1]])


def torchvision_to_mmdet(state_dict):
    """torchvision ``maskrcnn_resnet50_fpn`` / ``keypointrcnn_resnet50_fpn`` state dict ->
    MMDetection-style names (the keypoint head in our ``KeypointRCNNHead``'s names).

    The classifier's background row moves from first to last; the box regressor's and the mask
    predictor's background outputs (rows 0..3, channel 0) are dropped, so a 91-class COCO model
    becomes a ``num_classes=90`` one (our label = torchvision label - 1). Returns
    ``(new_state_dict, unmapped_keys)``.
    """
    out, unmapped = OrderedDict(), []
    for key, value in state_dict.items():
        new = _tv_key(key)
        if new is None:
            unmapped.append(key)
            continue
        if new.startswith('roi_head.bbox_head.fc_cls.'):
            value = _background_last(value)
        elif new.startswith('roi_head.bbox_head.fc_reg.'):
            value = value[4:]
        elif new.startswith('roi_head.mask_head.conv_logits.'):
            value = value[1:]
        out[new] = value
    return out, unmapped


def select_classes(state_dict, labels):
    """Keep only the classes ``labels`` (indices into the current foreground classes, in the
    new order) of every box and mask head: ``fc_cls`` rows (background stays last), class-
    specific ``fc_reg`` rows and ``conv_logits`` channels. E.g. a converted torchvision model
    (90 slots, label = COCO id - 1) becomes an 80-class one in the usual COCO order with
    ``labels = [i - 1 for i in COCO80_CATEGORY_IDS]``."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    out = OrderedDict()
    for key, value in state_dict.items():
        if re.search(r'bbox_head\.(\d+\.)?fc_cls\.', key):
            value = value[torch.cat([labels, labels.new_tensor([value.shape[0] - 1])])]
        elif re.search(r'bbox_head\.(\d+\.)?fc_reg\.', key) and value.shape[0] > 4:
            value = value.view(-1, 4, *value.shape[1:])[labels].flatten(0, 1)
        elif re.search(r'mask_head\.(\d+\.)?conv_logits\.', key) and value.shape[0] > 1:
            value = value[labels]
        out[key] = value
    return out


# ----------------------------------------------------------------------------- MMDetection

# MMDetection's per-stage modules in CascadeRoIHead / HybridTaskCascadeRoIHead: lists indexed by
# stage (``bbox_head.{i}``); StandardRoIHead (Mask R-CNN) holds a single module (``bbox_head.``).
_STAGED = ('bbox_head', 'mask_head', 'keypoint_head', 'bbox_roi_extractor', 'mask_roi_extractor')
_SINGLE_HEAD = re.compile(r'roi_head\.(%s)\.(?!\d+\.)(.+)' % '|'.join(_STAGED))


def mmdet_to_cascade(state_dict, single_stage_prefix=True):
    """MMDetection 3.x names -> cascade_seg names.

    Backbone, FPN, per-stage box/mask heads (``roi_head.bbox_head.{i}``) and HTC's
    ``roi_head.semantic_head`` already share MMDetection's names. The differences: the RPN
    sits in the detector's proposal-generator slot (``rpn_head.X`` -> ``proposal_generator.X``),
    and a single-stage (StandardRoIHead) ``roi_head.bbox_head.X`` becomes stage 0,
    ``roi_head.bbox_head.0.X``, when ``single_stage_prefix`` (our CascadeRoIHead keeps one
    module list for any number of stages). Extra keys (``num_batches_tracked`` etc.) are left
    for :func:`align_to_model` to judge against the target model.
    """
    out = OrderedDict()
    for key, value in state_dict.items():
        m = _SINGLE_HEAD.fullmatch(key) if single_stage_prefix else None
        key = f'roi_head.{m[1]}.0.{m[2]}' if m else key
        if key.startswith('rpn_head.'):
            key = 'proposal_generator.' + key[len('rpn_head.'):]
        out[key] = value
    return out


def convert_torchvision(state_dict, single_stage_prefix=True):
    """torchvision Mask R-CNN -> cascade_seg; returns ``(state_dict, unmapped_keys)``."""
    sd, unmapped = torchvision_to_mmdet(state_dict)
    return mmdet_to_cascade(sd, single_stage_prefix), unmapped


def convert_mmdet(state_dict, single_stage_prefix=True):
    """MMDetection 3.x (Mask R-CNN / Cascade Mask R-CNN / HTC) -> cascade_seg;
    returns ``(state_dict, unmapped_keys)`` (unmapped: MMDetection's bookkeeping entries)."""
    skip = [k for k in state_dict if k.startswith('data_preprocessor.')]
    kept = OrderedDict((k, v) for k, v in state_dict.items() if k not in skip)
    return mmdet_to_cascade(kept, single_stage_prefix), skip


# ----------------------------------------------------------------------------- checking

class ConversionReport:
    """What did not line up between a converted state dict and a model's own keys."""

    def __init__(self, unmapped=(), missing=(), unexpected=(), mismatched=(), dropped=()):
        self.unmapped = list(unmapped)       # source keys with no rule
        self.missing = list(missing)         # model keys the checkpoint does not provide
        self.unexpected = list(unexpected)   # converted keys the model does not have
        self.mismatched = list(mismatched)   # (key, checkpoint shape, model shape)
        self.dropped = list(dropped)         # harmless extras removed (num_batches_tracked)

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self):
        lines = []
        for title, items in (('unmapped source keys', self.unmapped),
                             ('missing in checkpoint', self.missing),
                             ('not in model', self.unexpected),
                             ('shape mismatch', [f'{k}: checkpoint {tuple(a)} vs model {tuple(b)}'
                                                 for k, a, b in self.mismatched])):
            if items:
                lines.append(f'{title} ({len(items)}):')
                lines += [f'  {k}' for k in items]
        if self.dropped:
            lines.append(f'dropped {len(self.dropped)} num_batches_tracked buffers')
        return '\n'.join(lines) if lines else 'all keys matched'


def align_to_model(state_dict, model_state_dict, unmapped=()):
    """Compare a converted state dict with a model's; drop extras the model cannot hold anyway
    (``num_batches_tracked`` of FrozenBN layers). Returns ``(state_dict, ConversionReport)``."""
    out, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked') and key not in model_state_dict:
            dropped.append(key)
            continue
        out[key] = value
    missing = [k for k in model_state_dict if k not in out
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in out if k not in model_state_dict]
    mismatched = [(k, tuple(v.shape), tuple(model_state_dict[k].shape)) for k, v in out.items()
                  if k in model_state_dict and tuple(v.shape) != tuple(model_state_dict[k].shape)]
    return out, ConversionReport(unmapped, missing, unexpected, mismatched, dropped)


def load_state_dict_file(path):
    """A state dict from a ``.pth``/``.pt`` file: raw, or under ``state_dict`` / ``model``.

    Always loads with ``weights_only=True`` plus the globals an mmengine checkpoint's ``meta``
    needs (cascade_seg.engine.checkpoint). A checkpoint that pickles anything else is refused
    with the name of the global; allow-list it with ``torch.serialization.add_safe_globals``
    only if you trust the file. There is deliberately no full-unpickler fallback.
    """
    try:
        from cascade_seg.engine.checkpoint import register_safe_globals
        register_safe_globals()
    except ImportError:  # the engine is optional here
        pass
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:  # the safe unpickler refused a global
        raise RuntimeError(f'{path}: safe loading refused the file ({err}). If you trust it, '
                           'allow-list that global with torch.serialization.add_safe_globals '
                           'and convert again.') from err
    for key in ('state_dict', 'model'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise ValueError(f'{path}: no state dict of tensors found')
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in ckpt.items())
