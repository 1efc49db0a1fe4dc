"""DetDataPreprocessor: normalisation, channel order, batch padding of images / masks / maps."""
import numpy as np
import torch
from mmengine.structures import InstanceData, PixelData

from cascade_seg.datasets.transforms import PackDetInputs
from cascade_seg.models.data_preprocessor import DetDataPreprocessor
from cascade_seg.registry import MODELS
from cascade_seg.structures import DetDataSample

MEAN, STD = [10.0, 20.0, 30.0], [2.0, 4.0, 5.0]


def sample(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    s = DetDataSample(metainfo=dict(img_shape=(h, w)))
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[:, : h // 2] = True
    s.gt_instances = InstanceData(bboxes=torch.tensor([[0, 0, w / 2, h / 2]] * 2),
                                  labels=torch.tensor([0, 1]), masks=masks)
    s.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0).long(),
                                       masks=torch.zeros(0, h, w, dtype=torch.bool))
    s.gt_sem_seg = PixelData(sem_seg=torch.ones(1, h, w, dtype=torch.int64))
    return img, s


def make_pre(**kw):
    kw = dict(mean=MEAN, std=STD, bgr_to_rgb=True, **kw)
    return DetDataPreprocessor(**kw)


def test_registered():
    assert MODELS.module_dict['DetDataPreprocessor'] is DetDataPreprocessor


def test_training_batch_is_normalised_and_padded():
    (img_a, s_a), (img_b, s_b) = sample(30, 50, 0), sample(40, 20, 1)
    out = make_pre()(dict(inputs=[img_a, img_b], data_samples=[s_a, s_b]), training=True)
    x, samples = out['inputs'], out['data_samples']
    assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 64)
    assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
    # channel 0 of the output is the R channel = input channel 2, normalised with mean[0]/std[0]
    expected = (img_a[[2, 1, 0]].float() - torch.tensor(MEAN)[:, None, None]) / \
        torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(x[0, :, :30, :50], expected)
    assert (x[0, :, 30:] == 0).all() and (x[0, :, :, 50:] == 0).all()  # pad_value after norm
    for s, pad_shape in zip(samples, [(32, 64), (64, 32)]):
        assert s.batch_input_shape == (64, 64)
        assert s.pad_shape == pad_shape
        m = s.gt_instances.masks
        assert m.dtype == torch.bool and m.shape == (2, 64, 64)
        assert s.ignored_instances.masks.shape == (0, 64, 64)
        seg = s.gt_sem_seg.sem_seg
        assert seg.shape == (1, 64, 64) and seg.dtype == torch.int64
    h, w = 30, 50
    m = samples[0].gt_instances.masks
    assert m[:, : h // 2, :w].all() and not m[:, h:].any() and not m[:, :, w:].any()
    seg = samples[0].gt_sem_seg.sem_seg
    assert (seg[:, :h, :w] == 1).all()
    assert (seg[:, h:] == 255).all() and (seg[:, :, w:] == 255).all()


def test_eval_mode_leaves_gt_unpadded_and_inference_without_samples():
    img, s = sample(30, 50, 0)
    out = make_pre()(dict(inputs=[img], data_samples=[s]), training=False)
    assert out['data_samples'][0].batch_input_shape == (32, 64)
    assert out['data_samples'][0].gt_instances.masks.shape == (2, 30, 50)
    out = make_pre(pad_size_divisor=16)(dict(inputs=[img]))
    assert out['inputs'].shape == (1, 3, 32, 64) and out['data_samples'] is None


def test_switches_and_stacked_input():
    img, s = sample(30, 50, 0)
    pre = DetDataPreprocessor(pad_mask=False, pad_seg=False, pad_value=-1)  # no norm, no swap
    out = pre(dict(inputs=img[None], data_samples=[s]), training=True)
    torch.testing.assert_close(out['inputs'][0, :, :30, :50], img.float())
    assert (out['inputs'][0, :, 30:] == -1).all()
    assert out['data_samples'][0].gt_instances.masks.shape == (2, 30, 50)
    assert out['data_samples'][0].gt_sem_seg.sem_seg.shape == (1, 30, 50)


def test_works_on_packed_pipeline_output():
    rng = np.random.default_rng(0)
    packed = [PackDetInputs()(dict(img=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                                   img_shape=(h, w), ori_shape=(h, w),
                                   gt_bboxes=np.array([[1, 1, 5, 5]], np.float32),
                                   gt_bboxes_labels=np.array([0]),
                                   gt_ignore_flags=np.array([False]),
                                   gt_masks=np.ones((1, h, w), np.uint8)))
              for h, w in [(33, 20), (10, 70)]]
    batch = dict(inputs=[p['inputs'] for p in packed],
                 data_samples=[p['data_samples'] for p in packed])
    out = make_pre()(batch, training=True)
    assert out['inputs'].shape == (2, 3, 64, 96)
    assert [s.gt_instances.masks.shape for s in out['data_samples']] == [(1, 64, 96)] * 2
    assert int(out['data_samples'][1].gt_instances.masks.sum()) == 10 * 70
