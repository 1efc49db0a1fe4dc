"""Our RoIAlign equals torchvision's: forward bit for bit (threads or not), and the windowed
separable CPU backward to 1e-5 for every map size, aligned or not, fixed or adaptive sampling."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from cascade_seg.models.roi_heads import roi_align as ra
from cascade_seg.models.roi_heads.roi_extractor import SingleRoIExtractor


def _rois(K, H, W, scale, seed, images=3):
    """RoIs of every kind: zero-size, sub-pixel, partly or wholly outside the map, elongated
    (as random proposals are), on ``images`` images."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([W, H]) / scale
    xy = torch.rand(K, 2, generator=g) * size * 1.1 - 6
    wh = torch.rand(K, 2, generator=g) ** 2 * size * 0.7
    wh[:2] = 0                                   # zero-size RoIs
    wh[2] = torch.tensor([0.3, 0.2])             # sub-pixel RoI
    xy[3] = size + 5                             # entirely outside
    wh[4] = torch.tensor([size[0] * 1.2, 2.0])   # wider than the map, thin
    b = torch.randint(0, images, (K, 1), generator=g).float()
    return torch.cat([b, xy, xy + wh], 1)


def _check(feat, rois, size, scale, sampling_ratio, aligned, chunk_elems=None):
    grad = torch.randn(rois.shape[0], feat.shape[1], *size, generator=torch.Generator()
                       .manual_seed(1))
    ref = tv_roi_align(feat, rois, size, scale, sampling_ratio, aligned)
    ref_grad, = torch.autograd.grad(ref, feat, grad)
    out = ra.roi_align(feat, rois, size, scale, sampling_ratio, aligned)
    assert torch.equal(out, ref)  # the forward is torchvision's kernel
    if chunk_elems is None:
        ours, = torch.autograd.grad(out, feat, grad)
    else:
        ours = ra.roi_align_backward_windows(grad, rois, feat.shape, scale, sampling_ratio,
                                             aligned, chunk_elems=chunk_elems)
    torch.testing.assert_close(ours, ref_grad, atol=1e-5, rtol=1e-5)
    return ours


@pytest.mark.parametrize('hw', [(13, 17), (32, 32), (64, 64), (128, 128)])
@pytest.mark.parametrize('sampling_ratio,aligned', [(0, True), (0, False), (2, True),
                                                    (2, False)])
def test_backward_matches_torchvision(hw, sampling_ratio, aligned):
    H, W = hw
    scale = H / 256.0  # the map covers a 256 px image (stride 2 .. 20)
    feat = torch.randn(3, 8, H, W, generator=torch.Generator().manual_seed(0),
                       requires_grad=True)
    for size in ((7, 7), (14, 14), (5, 3)):
        _check(feat, _rois(60, H, W, scale, seed=H + W), size, scale, sampling_ratio, aligned)


def test_backward_chunking_does_not_change_the_gradient():
    feat = torch.randn(2, 16, 64, 48, requires_grad=True)
    rois = _rois(80, 64, 48, 0.25, seed=3, images=2)
    whole = _check(feat, rois, (7, 7), 0.25, 0, True)
    tiny = _check(feat, rois, (7, 7), 0.25, 0, True, chunk_elems=2000)  # ~one RoI per chunk
    torch.testing.assert_close(tiny, whole, atol=1e-6, rtol=1e-6)


def test_threaded_forward_is_bit_exact():
    feat = torch.randn(2, 8, 40, 40)
    rois = _rois(100, 40, 40, 0.5, seed=5, images=2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # 3 shards of RoIs
        out = ra.roi_align_forward_threads(feat, rois, (7, 7), 0.5, 0, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out, tv_roi_align(feat, rois, (7, 7), 0.5, 0, True))


def test_threaded_forward_in_small_chunks_is_bit_exact(monkeypatch):
    # chunks of 16 RoIs (the minimum), more chunks than threads, the last one partial
    monkeypatch.setattr(ra, 'FORWARD_CHUNK_ELEMS', 1)
    feat = torch.randn(2, 8, 40, 40)
    rois = _rois(101, 40, 40, 0.5, seed=6, images=2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = ra.roi_align_forward_threads(feat, rois, (5, 3), 0.5, 2, False)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out, tv_roi_align(feat, rois, (5, 3), 0.5, 2, False))


def test_map_threads_keeps_order_and_bounds_its_threads():
    import threading
    seen = set()

    def fn(i):
        seen.add(threading.get_ident())
        return i * i
    items = list(range(50))
    assert ra.map_threads(fn, items, threads=3) == [i * i for i in items]
    assert len(seen) <= 3  # the calling thread and at most two helpers
    with pytest.raises(ZeroDivisionError):  # an error in any item reaches the caller
        ra.map_threads(lambda i: 1 // (i - 7), items, threads=3)


def test_images_without_rois_and_no_rois():
    feat = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = ra.roi_align(feat, torch.zeros(0, 5), (7, 7), 0.5)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert feat.grad.shape == feat.shape and feat.grad.abs().sum() == 0
    feat.grad = None
    rois = torch.tensor([[1., 0., 0., 8., 8.]])  # only image 1 has a RoI
    ra.roi_align(feat, rois, (7, 7), 0.5).sum().backward()
    assert feat.grad[0].abs().sum() == 0 and feat.grad[1].abs().sum() > 0


def test_float32_island_under_bf16_autocast():
    """Sampling coordinates and values stay float32: bfloat16 RoI coordinates at 512 px are
    off by up to 2 px; the output is float32 whatever autocast is on."""
    feat = torch.randn(1, 8, 128, 128, requires_grad=True)
    rois = torch.tensor([[0., 301.3, 257.9, 431.7, 389.1]])
    ref = tv_roi_align(feat, rois, (7, 7), 0.25, 0, True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ra.roi_align(feat, rois, (7, 7), 0.25, 0, True)
        with torch.no_grad():
            inf = ra.roi_align(feat.bfloat16(), rois.bfloat16().float(), (7, 7), 0.25, 0, True)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    out.sum().backward()
    assert feat.grad.dtype == torch.float32
    assert inf.dtype == torch.float32


def test_extractor_training_path_matches_inference_path():
    torch.manual_seed(0)
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0, aligned=True),
                             out_channels=4, featmap_strides=[4, 8])
    feats = [torch.randn(2, 4, 16, 16, requires_grad=True),
             torch.randn(2, 4, 8, 8, requires_grad=True)]
    rois = torch.tensor([[0., 2., 2., 30., 40.], [1., 0., 0., 63., 63.], [1., 5., 9., 12., 20.]])
    train_out = ext(feats, rois)
    with torch.no_grad():
        test_out = ext(feats, rois)
    assert torch.equal(train_out, test_out)


def test_extractor_keeps_levels_without_rois_in_the_graph():
    # DDP without find_unused_parameters needs a (zero) gradient for every level's convs
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0, aligned=True),
                             out_channels=4, featmap_strides=[4, 8, 16]).train()
    feats = [torch.randn(1, 4, s, s, requires_grad=True) for s in (32, 16, 8)]
    rois = torch.tensor([[0., 2., 2., 20., 24.], [0., 5., 9., 12., 20.]])  # all on level 0
    out = ext(feats, rois)
    with torch.no_grad():
        assert torch.equal(out, ext(feats, rois))  # the zero term changes no value
    (out * torch.randn_like(out)).sum().backward()
    assert feats[0].grad.abs().sum() > 0
    for f in feats[1:]:
        assert f.grad is not None and torch.count_nonzero(f.grad) == 0


@pytest.mark.parametrize('mean', [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize('sampling_ratio,aligned', [(0, True), (2, False)])
def test_window_mean_matches_roi_align_then_pooling(mean, sampling_ratio, aligned):
    """HTC's semantic context: RoIAlign at 14x14 then 2x2 means, computed at 7x7 directly."""
    from torch.nn import functional as F
    feat = torch.randn(3, 8, 32, 40, generator=torch.Generator().manual_seed(2),
                       requires_grad=True)
    rois = _rois(50, 32, 40, 0.125, seed=7)
    size = (7, 7)
    ref = F.avg_pool2d(tv_roi_align(feat, rois, (7 * mean[0], 7 * mean[1]), 0.125,
                                    sampling_ratio, aligned), mean)
    out = ra.roi_align_window_mean(feat, rois, size, 0.125, sampling_ratio, aligned, mean)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    ref_grad, = torch.autograd.grad(ref, feat, grad)
    ours, = torch.autograd.grad(out, feat, grad)
    torch.testing.assert_close(ours, ref_grad, atol=1e-5, rtol=1e-5)


def test_semantic_extractor_pools_the_mean_in_one_pass():
    from cascade_seg.models.roi_heads.roi_features import avg_pool_to
    ext = SingleRoIExtractor(dict(type='RoIAlign', output_size=14, sampling_ratio=0),
                             out_channels=4, featmap_strides=[8])
    feat = torch.randn(2, 4, 16, 16)
    rois = _rois(30, 16, 16, 0.125, seed=9, images=2)
    for size in ((7, 7), (14, 14)):
        torch.testing.assert_close(ext.pool_mean([feat], rois, size),
                                   avg_pool_to(ext([feat], rois), size), atol=1e-5, rtol=1e-5)
    assert ext.pool_mean([feat], rois[:0], (7, 7)).shape == (0, 4, 7, 7)
