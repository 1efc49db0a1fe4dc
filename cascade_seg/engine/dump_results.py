"""A metric that only writes the raw test predictions to a pickle (``test.py --out x.pkl``),
in MMDetection 3's format (see :func:`prediction_record`), so its analysis tools read it too."""
import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.fileio import dump

from cascade_seg.registry import METRICS

__all__ = ['encode_masks', 'prediction_record', 'DumpDetResults', 'load_predictions']


def encode_masks(masks):
    """Bool masks ``(N, H, W)`` -> list of COCO compressed RLE dicts (counts as str)."""
    from pycocotools import mask as mask_utils
    masks = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(masks) if masks.shape[-1] else []
    for rle in rles:
        rle['counts'] = rle['counts'].decode()
    return list(rles)


def _cpu(x):
    return x.detach().cpu() if hasattr(x, 'detach') else x


# metainfo kept in a record (MMDetection keeps the data sample's whole metainfo)
_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
              'flip_direction', 'pad_shape', 'batch_input_shape')


def prediction_record(sample):
    """One image's predictions in MMDetection 3's ``test.py --out`` format: a dict with the
    sample's metainfo (``img_id``, ``img_path``, ``ori_shape``, ...) and ``pred_instances``, a
    dict of CPU tensors (``bboxes`` (N, 4) xyxy in the original image, ``scores``, ``labels``,
    and ``mask_scores``, ``keypoints``, ``keypoint_scores`` when the model predicts them) with
    ``masks`` as a list of COCO compressed RLEs (``counts`` a str). Ground truth is left out.
    Accepts a DetDataSample or its dict form."""
    get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
    meta = sample if isinstance(sample, dict) else sample.metainfo
    rec = {k: meta[k] for k in _META_KEYS if k in meta}
    if 'ori_shape' in rec:
        rec['ori_shape'] = tuple(rec['ori_shape'])
    pred = get('pred_instances')
    fields = pred if isinstance(pred, dict) else (pred.to_dict() if pred is not None else {})
    out = {}
    for key, value in fields.items():
        if key == 'masks':
            masks = value if isinstance(value, list) else encode_masks(_cpu(value).numpy())
            out['masks'] = masks
        else:
            out[key] = _cpu(value)
    rec['pred_instances'] = out
    return rec


@METRICS.register_module()
class DumpDetResults(BaseMetric):
    """Collect predictions from every rank and dump them (masks as RLE) to ``out_file_path``."""

    def __init__(self, out_file_path, collect_device='cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not out_file_path.endswith(('.pkl', '.pickle')):
            raise ValueError(f'out_file_path must end with .pkl, got {out_file_path}')
        self.out_file_path = out_file_path

    def process(self, data_batch, data_samples):
        self.results.extend(prediction_record(s) for s in data_samples)

    def compute_metrics(self, results):
        dump(results, self.out_file_path)
        return {}


def load_predictions(path):
    """The records of a ``test.py --out`` pickle: ours, MMDetection 3's (the same format), and
    this project's earlier flat records (``bboxes`` etc. at the top level) as
    ``pred_instances`` records. Values are numpy arrays (masks stay RLE lists)."""
    from mmengine.fileio import load
    records = load(path)
    if not isinstance(records, list):
        raise ValueError(f'{path}: not a test.py --out pickle (a list of per-image dicts), got '
                         f'{type(records).__name__}')
    out = []
    for rec in records:
        rec = dict(rec)
        if 'pred_instances' not in rec:  # the earlier flat format
            rec['pred_instances'] = {k: rec.pop(k) for k in list(rec)
                                     if k in ('bboxes', 'scores', 'labels', 'masks',
                                              'mask_scores', 'keypoints', 'keypoint_scores')}
        pred = rec['pred_instances']
        pred = pred.to_dict() if hasattr(pred, 'to_dict') else dict(pred)
        for key, value in pred.items():
            if key != 'masks':
                pred[key] = _cpu(value).numpy() if hasattr(value, 'detach') else np.asarray(value)
            elif not isinstance(value, list):
                pred[key] = encode_masks(_cpu(value).numpy() if hasattr(value, 'detach')
                                         else value)
        rec['pred_instances'] = pred
        out.append(rec)
    return out
