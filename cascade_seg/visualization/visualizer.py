"""mmengine Visualizer that draws DetDataSamples with the cv2 helpers in draw.py."""
import cv2
from mmengine.dist import master_only
from mmengine.visualization import Visualizer

from cascade_seg.registry import VISUALIZERS
from .draw import draw_det_data_sample

__all__ = ['DetLocalVisualizer']


@VISUALIZERS.register_module()
class DetLocalVisualizer(Visualizer):
    """``add_datasample`` draws GT (left) and predictions (right) side by side.

    Images are RGB as everywhere in mmengine's visualizers; drawing happens in BGR.
    """

    def __init__(self, name='visualizer', image=None, vis_backends=None, save_dir=None,
                 alpha=0.5, **kwargs):
        super().__init__(name=name, image=image, vis_backends=vis_backends, save_dir=save_dir,
                         **kwargs)
        self.alpha = alpha
        self.dataset_meta = {}

    @master_only
    def add_datasample(self, name, image, data_sample=None, draw_gt=True, draw_pred=True,
                       show=False, wait_time=0, out_file=None, pred_score_thr=0.3, step=0):
        bgr = image[..., ::-1]
        classes = (self.dataset_meta or {}).get('classes')
        panels = []
        if draw_gt and data_sample is not None and 'gt_instances' in data_sample:
            panels.append(draw_det_data_sample(bgr, _only(data_sample, 'gt_instances'),
                                               classes, 0.0, self.alpha))
        if draw_pred and data_sample is not None and 'pred_instances' in data_sample:
            panels.append(draw_det_data_sample(bgr, _only(data_sample, 'pred_instances'),
                                               classes, pred_score_thr, self.alpha))
        drawn = cv2.hconcat(panels) if panels else bgr.copy()
        rgb = drawn[..., ::-1].copy()
        self.set_image(rgb)
        if show:
            self.show(rgb, win_name=name, wait_time=wait_time)
        if out_file is not None:
            cv2.imwrite(out_file, drawn)
        else:
            self.add_image(name, rgb, step)


def _only(data_sample, field):
    """A shallow copy of the sample holding just one instance field."""
    out = data_sample.new()
    for key in ('gt_instances', 'pred_instances'):
        if key != field and key in out:
            delattr(out, key)
    return out
