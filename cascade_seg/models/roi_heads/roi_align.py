"""RoIAlign in float32 with a CPU backward that uses every core, for every pyramid level.

The forward is torchvision's kernel (so training and inference pool bit-identical features);
at inference on CPU its RoIs are split over ``torch.get_num_threads()`` threads (the kernel is
serial and releases the GIL; every output element is computed by the same arithmetic, so the
result is the same bit for bit).

The backward is the separable form of the same arithmetic, restricted to each RoI's window.
An output bin averages bilinear samples; each sample's weight is a product of a y-weight and
an x-weight, and a sample is skipped when y or x falls outside the map, again a product of a
y-test and an x-test. So for RoI k on image b, with ``Ay[k]: (P, H)`` and ``Ax[k]: (Q, W)``
(sample positions, clamping and 1/count as torchvision's kernel computes them)

    RoIAlign(x)[k, c] = Ay[k] @ x[b, c] @ Ax[k].T
    dL/dx[b, c]      += Ay[k].T @ dL/dout[k, c] @ Ax[k]

``Ay[k]`` is non-zero only on the rows the RoI's samples touch (its window, a few pixels more
than the RoI), ``Ax[k]`` likewise on columns. The backward therefore computes each RoI's
gradient on its window only, ``(window_h, window_w, C)``, with two batched matrix products
over RoIs of similar window size (padded to the largest in a chunk, chunks bounded in memory),
and adds the windows into the ``(B*H*W, C)`` gradient with one ``index_add_`` per chunk. The
work is that of torchvision's backward (each window pixel is about one sample) but vectorised
over channels and done by multithreaded kernels, where torchvision's CPU backward walks every
(RoI, channel, bin, sample) serially, recomputing the bilinear weights per channel: it was
8.2 s of a 14.1 s HTC training step at 512 px. The gradient equals torchvision's up to float
rounding (summation order).

Sampling coordinates and weights are float32 whatever the features' dtype, and under autocast
the op runs in float32 (an explicit island): bfloat16 coordinates would be off by pixels.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.ops import roi_align as tv_roi_align

from ..tracing import is_tracing

__all__ = ['roi_align', 'roi_align_separable', 'roi_align_window_mean', 'axis_weights',
           'roi_align_forward_threads', 'roi_align_backward_windows', 'WindowPlan']

# Work buffer of one backward chunk, in elements (the window gradients of its RoIs).
CHUNK_ELEMS = 1 << 23
# Fewest RoIs worth a thread of their own in the forward.
MIN_ROIS_PER_THREAD = 16
# Most output elements of one threaded forward chunk (4 MiB of float32).
FORWARD_CHUNK_ELEMS = 1 << 20

_pool, _pool_size, _pool_lock = None, 0, threading.Lock()


def _reset_pool():
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, 'register_at_fork'):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_reset_pool)


def thread_pool(workers):
    """A process-wide thread pool with at least ``workers`` threads.

    Its threads keep torch's default intra-op count: each starts an OpenMP team of its own
    for parallel ops (the kernel's zero-filled output, the copy into the result). At
    inference that measured faster than helpers limited to one thread (Cascade Mask R-CNN,
    2 threads: 1.71 against 1.80 s); in a train step the threaded forward lost either way and
    is not used (``_RoIAlignFunction``)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(workers, thread_name_prefix='cascade_seg'), \
                workers
        return _pool


def map_threads(fn, items, threads=None):
    """``[fn(item) for item in items]`` on ``threads`` threads (default: the intra-op count),
    results in order, autograd off (grad mode is per thread); in this thread alone when
    tracing or exporting.

    The calling thread works too, so the pool needs ``threads - 1`` threads: every thread
    that allocates gets a glibc malloc arena of its own, which keeps what is freed in it
    (tens of MiB of peak RSS per extra thread in Mask R-CNN inference)."""
    n = min(threads or torch.get_num_threads(), len(items))
    if n <= 1 or is_tracing():
        return [fn(item) for item in items]
    results = [None] * len(items)
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def work():
        with torch.no_grad():
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                results[i] = fn(items[i])
    helpers = [thread_pool(n - 1).submit(work) for _ in range(n - 1)]
    try:
        work()
    finally:
        for h in helpers:
            h.result()
    return results


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


def _float(t):
    """float32, or float64 for float64 (never lower than float32)."""
    return t if t.dtype == torch.float64 else t.float()


def _interpolation(rois, output_size, spatial_scale, sampling_ratio, aligned, height, width):
    """``Ay (K, P, H)``, ``Ax (K, Q, W)`` (float32, float64 for float64 RoIs) and the batch
    index of each RoI."""
    P, Q = output_size
    r = _float(rois)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale - offset - x1
    rh = r[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision: legacy mode forces at least 1-pixel RoIs
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gh = torch.full((r.shape[0], ), sampling_ratio, dtype=torch.long, device=r.device)
        gw = gh
    else:
        gh = torch.ceil(rh / P).long()
        gw = torch.ceil(rw / Q).long()
    return (axis_weights(y1, rh / P, gh, P, height), axis_weights(x1, rw / Q, gw, Q, width),
            r[:, 0].long())


def _windows(mat):
    """First index and length of the non-zero columns of each RoI's ``(K, pooled, size)``
    matrix (length 1 at index 0 for an all-zero one)."""
    nonzero = mat.ne(0).any(1)                                              # (K, size)
    size = nonzero.shape[1]
    idx = torch.arange(size, device=mat.device)
    lo = torch.where(nonzero, idx, size).amin(1)
    hi = torch.where(nonzero, idx, -1).amax(1)
    empty = hi < lo
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    return lo, torch.where(empty, torch.ones_like(hi), hi - lo + 1)


def _chunks(heights, widths, channels, budget):
    """Groups of RoIs (largest window first) whose windows, padded to the group's largest,
    waste little work and fit ``budget`` elements: ``[(indices, h, w)]``."""
    area = [h * w for h, w in zip(heights, widths)]
    order = sorted(range(len(area)), key=lambda i: -area[i])
    groups, cur, hm, wm, used = [], [], 0, 0, 0
    for i in order:
        nh, nw = max(hm, heights[i]), max(wm, widths[i])
        padded = (len(cur) + 1) * nh * nw
        if cur and (padded * channels > budget or padded > 1.5 * (used + area[i]) + 512):
            groups.append((cur, hm, wm))
            cur, nh, nw, used = [], heights[i], widths[i], 0
        cur.append(i)
        hm, wm, used = nh, nw, used + area[i]
    if cur:
        groups.append((cur, hm, wm))
    return groups


def _local(mat, start, length):
    """Columns ``start[k] .. start[k] + length`` of each ``mat[k]``: (K, pooled, length)."""
    idx = start[:, None] + torch.arange(length, device=mat.device)
    return mat.gather(2, idx[:, None, :].expand(-1, mat.shape[1], -1))


class WindowPlan:
    """The separable form of RoIAlign for a set of RoIs on a ``(B, C, H, W)`` map: ``Ay (K, P,
    H)``, ``Ax (K, Q, W)``, each RoI's window and the chunks of RoIs processed together. With
    ``mean=(fy, fx)`` the matrices are those of RoIAlign at ``(P * fy, Q * fx)`` followed by the
    mean over ``fy x fx`` windows of bins (HTC's semantic RoI features: 14x14 pooled to 7x7),
    computed directly at ``(P, Q)``.

    A chunk whose windows cover at least half the map (large RoIs, or a coarse map such as
    HTC's semantic one, which pools every RoI) is computed on the whole map instead: one matrix
    product per image over all its rows, no window copied out or added back."""

    def __init__(self, rois, feat_shape, output_size, spatial_scale, sampling_ratio, aligned,
                 mean=(1, 1), dtype=torch.float32, chunk_elems=CHUNK_ELEMS):
        B, C, H, W = feat_shape
        (P, Q), (fy, fx) = output_size, mean
        self.shape, self.output_size = (B, C, H, W), (P, Q)
        ay, ax, self.batch = _interpolation(rois.to(dtype), (P * fy, Q * fx), spatial_scale,
                                            sampling_ratio, aligned, H, W)
        if fy > 1:
            ay = ay.view(-1, P, fy, H).mean(2)
        if fx > 1:
            ax = ax.view(-1, Q, fx, W).mean(2)
        self.ay, self.ax = ay, ax
        self.y_start, y_len = _windows(ay)
        self.x_start, x_len = _windows(ax)
        self.chunks = _chunks(y_len.tolist(), x_len.tolist(), C, chunk_elems)

    def _parts(self):
        """Per chunk: ``(indices, None)`` for a whole-map chunk, else ``(indices, (local Ay (k,
        P, hm), local Ax (k, Q, wm), rows of the windows' pixels in the (B*H*W, C) map))``."""
        B, C, H, W = self.shape
        device = self.ay.device
        for sel, hm, wm in self.chunks:
            sel = torch.tensor(sel, device=device)
            hm, wm = min(hm, H), min(wm, W)
            if 2 * hm * wm >= H * W:
                yield sel, None
                continue
            y0 = self.y_start[sel].clamp(max=H - hm)  # shifted to fit, it still covers the RoI
            x0 = self.x_start[sel].clamp(max=W - wm)
            rows = (((self.batch[sel] * H + y0)[:, None, None]
                     + torch.arange(hm, device=device)[None, :, None]) * W
                    + x0[:, None, None] + torch.arange(wm, device=device))
            yield sel, (_local(self.ay[sel], y0, hm), _local(self.ax[sel], x0, wm), rows)

    def _per_image(self, sel):
        batch = self.batch[sel]
        for b in batch.unique().tolist():
            yield b, sel[batch == b]

    def forward(self, feat):
        """``(K, C, P, Q)`` from the ``(B, C, H, W)`` map (float32 / float64)."""
        B, C, H, W = self.shape
        P, Q = self.output_size
        nhwc = feat.permute(0, 2, 3, 1).contiguous()                       # (B, H, W, C)
        flat = nhwc.view(B * H * W, C)
        out = feat.new_empty(self.ay.shape[0], P, Q, C)  # the chunks cover every RoI
        for sel, local in self._parts():
            if local is None:  # the whole map: over y, all rows at once, then over x
                for b, idx in self._per_image(sel):
                    t = (self.ay[idx].reshape(-1, H) @ nhwc[b].view(H, W * C))
                    out[idx] = torch.matmul(self.ax[idx][:, None], t.view(len(idx), P, W, C))
                continue
            ay_k, ax_k, rows = local
            k, hm, wm = len(sel), ay_k.shape[2], ax_k.shape[2]
            crop = flat.index_select(0, rows.reshape(-1)).view(k, hm, wm * C)
            t = torch.bmm(ay_k, crop).view(k, P, wm, C)                    # over y
            out[sel] = torch.matmul(ax_k[:, None], t)                      # over x: (k, P, Q, C)
        return out.permute(0, 3, 1, 2).contiguous()

    def backward(self, grad_output):
        """Gradient w.r.t. the map from ``grad_output (K, C, P, Q)``: each RoI's window
        gradient, added into the map with ``index_add_`` (whole-map chunks: one product per
        image accumulated in place)."""
        B, C, H, W = self.shape
        P = self.output_size[0]
        g = grad_output.to(self.ay.dtype).permute(0, 2, 3, 1)              # (K, P, Q, C)
        grad = torch.zeros(B * H * W, C, dtype=g.dtype, device=g.device)
        per_image = grad.view(B, H, W * C)
        for sel, local in self._parts():
            if local is None:
                for b, idx in self._per_image(sel):
                    t = torch.matmul(self.ax[idx].transpose(1, 2)[:, None], g[idx])  # (n,P,W,C)
                    per_image[b].addmm_(self.ay[idx].reshape(-1, H).t(),
                                        t.reshape(-1, W * C))
                continue
            ay_k, ax_k, rows = local
            k, wm = len(sel), ax_k.shape[2]
            # over x: (k, 1, wm, Q) @ (k, P, Q, C) -> (k, P, wm, C); over y: -> (k, hm, wm * C)
            t = torch.matmul(ax_k.transpose(1, 2)[:, None], g[sel])
            win = torch.bmm(ay_k.transpose(1, 2), t.reshape(k, P, wm * C))
            grad.index_add_(0, rows.reshape(-1), win.reshape(-1, C))
        return grad.view(B, H, W, C).permute(0, 3, 1, 2)


def roi_align_backward_windows(grad_output, rois, feat_shape, spatial_scale, sampling_ratio,
                               aligned, chunk_elems=CHUNK_ELEMS):
    """Gradient of ``roi_align`` w.r.t. its ``(B, C, H, W)`` input, computed window by window
    (see the module docstring) in float32 (float64 for a float64 ``grad_output``).
    ``grad_output``: ``(K, C, P, Q)``."""
    plan = WindowPlan(rois, feat_shape, grad_output.shape[-2:], spatial_scale, sampling_ratio,
                      aligned, dtype=_float(grad_output).dtype, chunk_elems=chunk_elems)
    return plan.backward(grad_output)


def roi_align_forward_threads(feat, rois, output_size, spatial_scale, sampling_ratio, aligned,
                              out=None, rows=None):
    """torchvision's CPU RoIAlign forward with the RoIs split over the intra-op threads.

    The RoIs go in chunks of at most ``FORWARD_CHUNK_ELEMS`` output elements (and at least
    ``MIN_ROIS_PER_THREAD`` RoIs), each written into the one output as soon as it is pooled:
    the transient memory is a chunk per thread, not a second copy of the output. With ``out``
    and ``rows`` the chunks go to ``out[rows]`` (a multi-level extractor's output, without a
    per-level map in between) and ``out`` is returned."""
    P, Q = output_size
    K = rois.shape[0]
    n = min(torch.get_num_threads(), K // MIN_ROIS_PER_THREAD)
    op = torch.ops.torchvision.roi_align
    if n <= 1 or feat.is_cuda or is_tracing():  # traced/exported: one op, whatever the RoIs
        pooled = op(feat, rois, spatial_scale, P, Q, sampling_ratio, aligned)
        if out is None:
            return pooled
        out[rows] = pooled
        return out
    feat = feat.contiguous()
    per_roi = feat.shape[1] * P * Q
    step = max(MIN_ROIS_PER_THREAD, min(-(-K // n), FORWARD_CHUNK_ELEMS // per_roi))
    if out is None:
        out = feat.new_empty((K, feat.shape[1], P, Q))

    def pool(start):
        chunk = op(feat, rois[start:start + step], spatial_scale, P, Q, sampling_ratio, aligned)
        if rows is None:
            out[start:start + step] = chunk
        else:
            out.index_copy_(0, rows[start:start + step], chunk)
    map_threads(pool, list(range(0, K, step)), threads=n)
    return out


class _WindowRoIAlignFunction(torch.autograd.Function):
    """RoIAlign (optionally followed by a window mean) computed separably both ways."""

    @staticmethod
    def forward(ctx, feat, rois, output_size, spatial_scale, sampling_ratio, aligned, mean):
        plan = WindowPlan(rois, feat.shape, output_size, spatial_scale, sampling_ratio, aligned,
                          mean, dtype=feat.dtype)
        ctx.plan = plan
        return plan.forward(feat)

    @staticmethod
    def backward(ctx, grad_output):
        grad = None
        if ctx.needs_input_grad[0]:
            with torch.autocast(device_type=grad_output.device.type, enabled=False):
                grad = ctx.plan.backward(grad_output)
        return grad, None, None, None, None, None, None


def roi_align_window_mean(feat, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                          aligned=True, mean=(1, 1)):
    """RoIAlign at ``output_size * mean`` then the mean over ``mean`` windows of bins (what
    MMDetection's HTC does to its 14x14 semantic RoI features for the 7x7 box features),
    computed at ``output_size`` directly in the separable form, forward and backward, in
    float32. Equals torchvision's op (and ``adaptive_avg_pool2d``) up to float rounding; much
    faster for RoIs that are large on the map (the semantic map at stride 8 gets every RoI,
    whatever its size), where torchvision's kernel takes up to 25 samples per bin."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    feat = _float(feat)
    with torch.autocast(device_type=feat.device.type, enabled=False):
        return _WindowRoIAlignFunction.apply(feat, rois.to(feat.dtype), tuple(output_size),
                                             float(spatial_scale), int(sampling_ratio),
                                             bool(aligned), tuple(mean))


class _RoIAlignFunction(torch.autograd.Function):
    """RoIAlign whose CPU backward is :func:`roi_align_backward_windows`."""

    @staticmethod
    def forward(ctx, feat, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.params = (tuple(feat.shape), spatial_scale, sampling_ratio, aligned)
        # One thread: in a train step (512 RoIs an image) the threaded forward gained less
        # than it cost (Mask R-CNN at 2 threads: ~1.05 s a step with it, ~0.96 s without; with
        # single-threaded helpers about even), while inference gains from it.
        P, Q = output_size
        return torch.ops.torchvision.roi_align(feat, rois, spatial_scale, P, Q, sampling_ratio,
                                               aligned)

    @staticmethod
    def backward(ctx, grad_output):
        rois, = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            with torch.autocast(device_type='cpu', enabled=False):
                grad = roi_align_backward_windows(grad_output, rois, *ctx.params)
        return grad, None, None, None, None, None


def roi_align_separable(feat, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                        aligned=True):
    """``torchvision.ops.roi_align`` (same values) with the windowed separable CPU backward.
    ``rois``: (K, 5) ``[batch_idx, x1, y1, x2, y2]``. Computed and returned in float32
    (float64 stays float64)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    feat = _float(feat)
    with torch.autocast(device_type=feat.device.type, enabled=False):
        return _RoIAlignFunction.apply(feat, rois.to(feat.dtype), tuple(output_size),
                                       float(spatial_scale), int(sampling_ratio), bool(aligned))


def roi_align(feat, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
              out=None, rows=None):
    """RoIAlign in float32 (an autocast-free island; lower-precision inputs are converted,
    float64 stays float64): on CPU torchvision's forward over all threads, with the windowed
    separable backward when a gradient is needed; on GPU torchvision's op.

    With ``out`` and ``rows``: ``out[rows] =`` the pooled features, and ``out`` is returned; at
    CPU inference each thread's chunk goes straight to its rows (a multi-level extractor's
    output, without a per-level map allocated, filled and copied again)."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if feat.requires_grad and torch.is_grad_enabled() and not feat.is_cuda and not is_tracing():
        pooled = roi_align_separable(feat, rois, output_size, spatial_scale, sampling_ratio,
                                     aligned)
    else:
        feat = _float(feat)
        rois = rois.to(feat.dtype)
        if feat.is_cuda:
            with torch.autocast(device_type='cuda', enabled=False):
                pooled = tv_roi_align(feat, rois, output_size, spatial_scale, sampling_ratio,
                                      aligned)
        else:
            direct = out is not None and out.dtype == feat.dtype
            with torch.autocast(device_type='cpu', enabled=False):
                pooled = roi_align_forward_threads(
                    feat, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio),
                    bool(aligned), out=out if direct else None, rows=rows if direct else None)
            if direct:
                return pooled
    if out is None:
        return pooled
    out[rows] = pooled.to(out.dtype)
    return out
