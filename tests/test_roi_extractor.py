"""SingleRoIExtractor: level mapping and pooling against direct torchvision calls."""
import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from cascade_seg.models.roi_heads.roi_extractor import (SingleRoIExtractor, map_roi_levels,
                                                        rescale_rois)
from cascade_seg.registry import MODELS

torch.set_num_threads(1)
STRIDES = [4, 8, 16, 32]


def _square_rois(sizes, batch_index=0):
    return torch.tensor([[batch_index, 10., 10., 10. + s, 10. + s] for s in sizes])


def test_mmdet_level_mapping():
    rois = _square_rois([20, 56, 111, 112, 224, 447, 448, 5000])
    assert map_roi_levels(rois, 4).tolist() == [0, 0, 0, 1, 2, 2, 3, 3]
    assert map_roi_levels(rois, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert map_roi_levels(_square_rois([0]), 4).tolist() == [0]       # degenerate box


def test_torchvision_level_mapping_matches_levelmapper():
    from torchvision.ops.poolers import LevelMapper
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 300
    wh = torch.rand(200, 2) * 600 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    rois = torch.cat([torch.zeros(200, 1), boxes], 1)
    expected = LevelMapper(2, 5)([boxes])
    assert torch.equal(map_roi_levels(rois, 4, mode='torchvision', finest_stride=4), expected)
    with pytest.raises(ValueError):
        map_roi_levels(rois, 4, mode='nope')


def _feats(batch=2, channels=3):
    torch.manual_seed(0)
    return [torch.randn(batch, channels, 128 // s, 96 // s) for s in STRIDES]


def test_roi_align_matches_direct_call_on_the_mapped_level():
    ext = MODELS.build(dict(type='SingleRoIExtractor', out_channels=3, featmap_strides=STRIDES,
                            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0,
                                           aligned=True)))
    assert ext.num_inputs == 4
    feats = _feats()
    rois = torch.tensor([[0, 3., 4., 40., 30.],       # level 0
                         [1, 10., 5., 150., 120.],    # sqrt(140*115) ~ 127 -> level 1
                         [0, 0., 0., 96., 128.],      # ~111 -> level 0
                         [1, 0., 0., 300., 400.]])    # ~346 -> level 2
    levels = map_roi_levels(rois, 4)
    assert levels.tolist() == [0, 1, 0, 2]
    out = ext(feats, rois)
    assert out.shape == (4, 3, 7, 7)
    for i, lvl in enumerate(levels.tolist()):
        expected = roi_align(feats[lvl], rois[i:i + 1], 7, spatial_scale=1 / STRIDES[lvl],
                             sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[i:i + 1], expected)


def test_inference_pools_straight_into_the_output_on_threads():
    # many RoIs on every level, two threads: chunks are written to their rows of the output
    ext = MODELS.build(dict(type='SingleRoIExtractor', out_channels=3, featmap_strides=STRIDES,
                            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0)))
    feats = _feats()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=g) * 80
    side = torch.tensor([40., 160., 320., 640.]).repeat_interleave(100)[:, None]
    wh = side * (0.8 + 0.4 * torch.rand(400, 2, generator=g))
    rois = torch.cat([torch.randint(0, 2, (400, 1), generator=g).float(), xy, xy + wh], 1)
    levels = map_roi_levels(rois, 4)
    assert all((levels == lvl).sum() >= 64 for lvl in range(4))  # threaded on every level
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            out = ext(feats, rois)
    finally:
        torch.set_num_threads(old)
    for lvl in range(4):
        rows = torch.nonzero(levels == lvl, as_tuple=True)[0]
        expected = roi_align(feats[lvl], rois[rows], 7, spatial_scale=1 / STRIDES[lvl],
                             sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[rows], expected)


def test_training_gradients_equal_pooling_each_roi_on_its_level():
    ext = MODELS.build(dict(type='SingleRoIExtractor', out_channels=3, featmap_strides=STRIDES,
                            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2)))
    feats = [f.requires_grad_() for f in _feats()]
    ref_feats = [f.detach().clone().requires_grad_() for f in feats]
    rois = torch.tensor([[0, 3., 4., 40., 30.], [1, 10., 5., 150., 120.],
                         [0, 0., 0., 96., 128.], [1, 0., 0., 300., 400.],
                         [0, 5., 5., 250., 260.]])
    weight = torch.randn(len(rois), 3, 7, 7)
    (ext(feats, rois) * weight).sum().backward()
    levels = map_roi_levels(rois, 4)
    ref = sum((roi_align(ref_feats[lvl], rois[i:i + 1], 7, spatial_scale=1 / STRIDES[lvl],
                         sampling_ratio=2, aligned=True) * weight[i:i + 1]).sum()
              for i, lvl in enumerate(levels.tolist()))
    ref.backward()
    for f, r in zip(feats, ref_feats):
        torch.testing.assert_close(f.grad, r.grad if r.grad is not None else
                                   torch.zeros_like(f), rtol=1e-5, atol=1e-6)


def test_roi_pool_path_and_tuple_output_size():
    ext = SingleRoIExtractor(dict(type='RoIPool', output_size=(3, 5)), 3, STRIDES)
    feats = _feats()
    rois = torch.tensor([[1, 8., 8., 60., 40.], [0, 0., 0., 240., 250.]])
    out = ext(feats, rois)
    assert out.shape == (2, 3, 3, 5)
    torch.testing.assert_close(out[:1], roi_pool(feats[0], rois[:1], (3, 5), 1 / 4))
    torch.testing.assert_close(out[1:], roi_pool(feats[2], rois[1:], (3, 5), 1 / 16))


def test_empty_rois_and_extra_levels_ignored():
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=14), 3, STRIDES)
    feats = _feats() + [torch.randn(2, 3, 2, 2)]       # a P6 the extractor must ignore
    assert ext(feats, torch.zeros(0, 5)).shape == (0, 3, 14, 14)
    rois = _square_rois([5000])
    expected = roi_align(feats[3], rois, 14, 1 / 32, 0, True)
    torch.testing.assert_close(ext(feats, rois), expected)


def test_gradients_reach_every_level_in_training():
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=2), 3, STRIDES).train()
    feats = [f.requires_grad_() for f in _feats()]
    ext(feats, _square_rois([20])).sum().backward()
    assert all(f.grad is not None for f in feats)
    assert feats[0].grad.abs().sum() > 0 and feats[3].grad.abs().sum() == 0


def test_roi_scale_factor_and_gc_context():
    rois = torch.tensor([[0, 10., 20., 30., 60.]])
    torch.testing.assert_close(rescale_rois(rois, 2.0), torch.tensor([[0, 0., 0., 40., 80.]]))
    feats = _feats()
    plain = SingleRoIExtractor(dict(type='RoIAlign', output_size=7), 3, STRIDES)
    torch.testing.assert_close(plain(feats, rois, roi_scale_factor=2.0),
                               plain(feats, rescale_rois(rois, 2.0)))
    gc = SingleRoIExtractor(dict(type='RoIAlign', output_size=7), 3, STRIDES, gc_context=True)
    rois = torch.tensor([[1, 10., 20., 30., 60.]])
    diff = gc(feats, rois) - plain(feats, rois)
    context = feats[0][1].mean(dim=(1, 2))[:, None, None].expand(3, 7, 7)
    torch.testing.assert_close(diff, context[None])


def test_single_level_extractor_uses_that_level_for_all():
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=4), 3, [8])
    feats = _feats()[1:2]
    rois = _square_rois([10, 500])
    torch.testing.assert_close(ext(feats, rois), roi_align(feats[0], rois, 4, 1 / 8, 0, True))


def test_level_mapping_rules_are_registered_and_pluggable():
    from cascade_seg.models.roi_heads.level_mapping import AreaRatioLevelMapping
    from cascade_seg.registry import TASK_UTILS
    rule = TASK_UTILS.build(dict(type='AreaRatioLevelMapping'))
    assert isinstance(rule, AreaRatioLevelMapping)
    # CenterMask's rule on an 800x1216 input, levels P3..P5 (strides 8, 16, 32)
    h, w = 800, 1216
    area = h * w

    def box_of(frac):          # a box covering `frac` of the image, same aspect ratio
        s = frac ** 0.5
        return [0, 0, 0, w * s, h * s]
    rois = torch.tensor([box_of(0.51), box_of(0.49), box_of(0.26), box_of(0.24), box_of(0.1),
                         [0, 0, 0, 256, 256]])
    levels = rule(rois, [8, 16, 32], img_shapes=[(h, w)]) + 3
    assert levels.tolist() == [5, 4, 4, 3, 3, 3]
    assert 256 * 256 / area < 0.25
    # the extractor takes any registered rule by config
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0), 4,
                             [8, 16, 32], level_mapping=dict(type='AreaRatioLevelMapping'))
    feats = [torch.randn(1, 4, h // s, w // s) for s in (8, 16, 32)]
    with pytest.raises(ValueError, match='img_shapes'):
        ext(feats, rois)
    assert ext(feats, rois, img_shapes=[(h, w)]).shape == (6, 4, 7, 7)
