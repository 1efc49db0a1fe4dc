"""RoIAlign as two matrix products, for CPU training on small feature maps.

A RoIAlign output bin averages bilinear samples; each sample's weight is a product of a
y-weight and an x-weight, and a sample is skipped when y or x falls outside the map,
which is again a product of a y-test and an x-test. So for RoI k on image b

    RoIAlign(x)[k, c] = Ay[k] @ x[b, c] @ Ax[k].T     Ay: (P, H), Ax: (Q, W)

with the same arithmetic as torchvision's kernel (sample positions, clamping, 1/count).
Both products are dense matmuls whose autograd backward is multithreaded, whereas
torchvision's CPU backward walks every (RoI, channel, bin, sample) serially and was 60%
of an HTC training step on the synthetic configs. The matmul cost grows with H*W, so the
extractor uses this only on CPU, with gradients, for maps up to ``MAX_SEPARABLE_PIXELS``.
"""
import torch
from torchvision.ops import roi_align as tv_roi_align

MAX_SEPARABLE_PIXELS = 32 * 32


def axis_weights(start, bin_size, grid, pooled, size):
    """(K, pooled, size) interpolation matrix of one axis, already divided by ``grid``.

    ``start, bin_size``: (K,) RoI start and bin size in feature pixels; ``grid``: (K,)
    samples per bin along this axis (0 for degenerate RoIs gives an all-zero row).
    """
    K = start.shape[0]
    g_max = max(int(grid.max()), 1) if K else 1
    dt = start.dtype
    p = torch.arange(pooled, dtype=dt, device=start.device)
    i = torch.arange(g_max, dtype=dt, device=start.device)
    g = grid.to(dt).clamp(min=1)[:, None, None]
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
           + (i[None, None, :] + 0.5) * bin_size[:, None, None] / g)       # (K, pooled, g_max)
    keep = (i[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    pos = torch.where(edge, low.to(dt), pos)
    high = torch.where(edge, low, low + 1)
    frac = pos - low.to(dt)
    w_low = (1 - frac) * keep / g
    w_high = frac * keep / g
    mat = torch.zeros(K, pooled, size, dtype=dt, device=start.device)
    mat.scatter_add_(2, low, w_low)
    mat.scatter_add_(2, high, w_high)
    return mat


def roi_align_separable(feat, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                        aligned=True):
    """Same result as ``torchvision.ops.roi_align`` (up to float rounding), differentiable
    through matmuls. ``rois``: (K, 5) ``[batch_idx, x1, y1, x2, y2]``."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    P, Q = output_size
    B, C, H, W = feat.shape
    K = rois.shape[0]
    r = rois.to(feat.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale - offset - x1
    rh = r[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision: legacy mode forces at least 1-pixel RoIs
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gh = torch.full((K, ), sampling_ratio, dtype=torch.long, device=feat.device)
        gw = gh
    else:
        gh = torch.ceil(rh / P).long()
        gw = torch.ceil(rw / Q).long()
    ay = axis_weights(y1, rh / P, gh, P, H)                                 # (K, P, H)
    ax = axis_weights(x1, rw / Q, gw, Q, W)                                 # (K, Q, W)
    batch = r[:, 0].long()
    pooled, order = [], []
    for b in range(B):
        idx = torch.nonzero(batch == b, as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        k = idx.numel()
        x = feat[b].permute(1, 0, 2).reshape(H, C * W)                      # (H, C*W)
        rows = (ay[idx].reshape(k * P, H) @ x).reshape(k, P * C, W)         # sum over y
        pooled.append((rows @ ax[idx].transpose(1, 2)).reshape(k, P, C, Q))  # sum over x
        order.append(idx)
    if not pooled:
        return feat.new_zeros(K, C, P, Q)
    out = torch.cat(pooled)
    if len(pooled) > 1 and bool((batch[1:] < batch[:-1]).any()):
        # back to the RoIs' order with one gather (RoIs are usually already image by image:
        # then no gather, whose backward is a slow scatter into a zeroed copy)
        out = out[torch.argsort(torch.cat(order))]
    return out.permute(0, 2, 1, 3)


def roi_align(feat, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    """torchvision's RoIAlign, or the separable form where its CPU backward would be slow."""
    use_separable = (not feat.is_cuda and feat.requires_grad and torch.is_grad_enabled()
                     and feat.shape[-2] * feat.shape[-1] <= MAX_SEPARABLE_PIXELS)
    if use_separable:
        return roi_align_separable(feat, rois, output_size, spatial_scale, sampling_ratio,
                                   aligned)
    return tv_roi_align(feat, rois, output_size, spatial_scale, sampling_ratio, aligned)
