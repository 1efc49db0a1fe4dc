"""A metric that only writes the raw test predictions to a pickle (``test.py --out x.pkl``)."""
import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.fileio import dump

from cascade_seg.registry import METRICS

__all__ = ['encode_masks', 'prediction_record', 'DumpDetResults']


def encode_masks(masks):
    """Bool masks ``(N, H, W)`` -> list of COCO compressed RLE dicts (counts as str)."""
    from pycocotools import mask as mask_utils
    masks = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(masks) if masks.shape[-1] else []
    for rle in rles:
        rle['counts'] = rle['counts'].decode()
    return list(rles)


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)


def prediction_record(sample):
    """Plain, picklable predictions of one image (a DetDataSample or its dict form)."""
    get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
    meta = sample if isinstance(sample, dict) else sample.metainfo
    pred = get('pred_instances')
    rec = dict(img_id=meta.get('img_id'), img_path=meta.get('img_path'),
               ori_shape=tuple(meta.get('ori_shape', ())))
    pred_get = pred.get if isinstance(pred, dict) else (lambda k: getattr(pred, k, None))
    for key in ('bboxes', 'scores', 'labels'):
        value = pred_get(key)
        if value is not None:
            rec[key] = _numpy(value)
    if pred_get('masks') is not None:
        rec['masks'] = encode_masks(_numpy(pred_get('masks')))
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
