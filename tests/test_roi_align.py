"""The separable (matmul) RoIAlign equals torchvision's, values and gradients."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from cascade_seg.models.roi_heads import roi_align as ra
from cascade_seg.models.roi_heads.roi_extractor import SingleRoIExtractor


def _rois(K, H, W, scale, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(K, 2, generator=g) * torch.tensor([W, H]) / scale * 1.1 - 6
    wh = torch.rand(K, 2, generator=g) * torch.tensor([W, H]) / scale * 0.6
    wh[:2] = 0  # zero-size RoIs
    wh[2] = torch.tensor([0.3, 0.2])  # sub-pixel RoI
    b = torch.randint(0, 3, (K, 1), generator=g).float()
    return torch.cat([b, xy, xy + wh], 1)


@pytest.mark.parametrize('size,sampling_ratio,aligned', [
    ((7, 7), 0, True), ((14, 14), 0, True), ((7, 7), 2, False), ((5, 3), 0, False),
    ((7, 7), 1, True)])
def test_values_and_gradients_match_torchvision(size, sampling_ratio, aligned):
    torch.manual_seed(0)
    feat = torch.randn(3, 6, 13, 17, requires_grad=True)
    rois = _rois(40, 13, 17, 0.25, 1)
    grad = torch.randn(40, 6, *size)
    ref = tv_roi_align(feat, rois, size, 0.25, sampling_ratio, aligned)
    ref.backward(grad)
    ref_grad, feat.grad = feat.grad.clone(), None
    out = ra.roi_align_separable(feat, rois, size, 0.25, sampling_ratio, aligned)
    out.backward(grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feat.grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_images_without_rois_and_no_rois():
    feat = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = ra.roi_align_separable(feat, torch.zeros(0, 5), (7, 7), 0.5)
    assert out.shape == (0, 4, 7, 7)
    rois = torch.tensor([[1., 0., 0., 8., 8.]])  # only image 1 has a RoI
    out = ra.roi_align_separable(feat, rois, (7, 7), 0.5)
    out.sum().backward()
    assert feat.grad[0].abs().sum() == 0 and feat.grad[1].abs().sum() > 0


def test_dispatch_uses_torchvision_without_grad_or_on_large_maps(monkeypatch):
    calls = []
    monkeypatch.setattr(ra, 'roi_align_separable',
                        lambda *a, **k: calls.append(1) or tv_roi_align(*a, **k))
    rois = torch.tensor([[0., 1., 1., 20., 20.]])
    small = torch.randn(1, 2, 16, 16, requires_grad=True)
    ra.roi_align(small, rois, (7, 7), 0.25)
    assert calls == [1]
    with torch.no_grad():  # inference: torchvision's kernel, bit-exact parity
        ra.roi_align(small, rois, (7, 7), 0.25)
    big = torch.randn(1, 2, 64, 64, requires_grad=True)
    ra.roi_align(big, rois, (7, 7), 0.25)
    assert calls == [1]


def test_extractor_training_path_matches_inference_path():
    torch.manual_seed(0)
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0, aligned=True),
                             out_channels=4, featmap_strides=[4, 8])
    feats = [torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(2, 4, 8, 8, requires_grad=True)]
    rois = torch.tensor([[0., 2., 2., 30., 40.], [1., 0., 0., 63., 63.], [1., 5., 9., 12., 20.]])
    train_out = ext(feats, rois)
    with torch.no_grad():
        test_out = ext(feats, rois)
    torch.testing.assert_close(train_out, test_out, atol=1e-5, rtol=1e-5)
