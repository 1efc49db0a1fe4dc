"""Per-image sample passed between the data pipeline, the model and the metric."""
from mmengine.structures import BaseDataElement, InstanceData, PixelData


class DetDataSample(BaseDataElement):
    """One image's annotations and predictions.

    Fields (all optional):
      gt_instances:      InstanceData with ``bboxes`` (N, 4) float xyxy in the
                         network-input frame, ``labels`` (N,) int64, ``masks``
                         (N, H, W) bool bitmaps, ``keypoints`` (N, K, 3).
      ignored_instances: the same fields for crowd / ignore regions; these are
                         never positives, assigners may use them to ignore anchors.
      gt_sem_seg:        PixelData with ``sem_seg`` (1, H, W) int64, 255 = ignore.
      pred_instances:    InstanceData with ``bboxes``, ``scores``, ``labels`` and
                         ``masks`` (N, H, W) bool at the original image size.
    Metainfo: img_id, img_path, ori_shape (h, w), img_shape (h, w),
    scale_factor (w_scale, h_scale), flip, flip_direction, pad_shape,
    batch_input_shape.
    """

    def _field(name, dtype, doc):  # noqa: N805 - property factory used in the class body
        def getter(self):
            return getattr(self, f'_{name}')

        def setter(self, value):
            self.set_field(value, f'_{name}', dtype=dtype)

        def _del(self):
            delattr(self, f'_{name}')

        return property(getter, setter, _del, doc)

    gt_instances = _field('gt_instances', InstanceData, 'ground-truth instances')
    ignored_instances = _field('ignored_instances', InstanceData, 'crowd / ignore regions')
    pred_instances = _field('pred_instances', InstanceData, 'predicted instances')
    proposals = _field('proposals', InstanceData, 'precomputed or RPN proposals')
    gt_sem_seg = _field('gt_sem_seg', PixelData, 'ground-truth semantic map')
    pred_sem_seg = _field('pred_sem_seg', PixelData, 'predicted semantic map')
    del _field


SampleList = list
