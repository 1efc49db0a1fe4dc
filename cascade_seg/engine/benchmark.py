"""Speed / memory / FLOPs of a detector on synthetic input.

Measures what ``shared/mmdet_ref/mmdet_ref.py`` measures for MMDetection, so the two
can be run side by side: a seeded random uint8 BGR image through the model's data
preprocessor and ``test_step`` (inference), or ``train_step`` with SGD at lr 0
(identical work every run) on the same image with a few elliptical GT instances.
With ``score_thr=0`` even random weights keep ``max_per_img`` detections, so the
mask branch runs on ~100 boxes.
"""
import copy
import resource
import statistics
import sys
import time

import numpy as np
import torch

from ..models.fused_conv import fuse_for_inference
from ..models.tracing import plain_ops
from .precision import normalize_precision, precision_dtype, set_inference_precision

__all__ = ['synthetic_batch', 'set_score_thr', 'build_benchmark_model', 'benchmark',
           'match_detections', 'cpu_description', 'run_measured', 'pool_rounds', 'paired_ratio']


def set_score_thr(model_cfg, thr):
    """Override ``test_cfg.rcnn.score_thr`` (a dict, or a list with one dict per stage)."""
    rcnn = (model_cfg.get('test_cfg') or {}).get('rcnn')
    for item in (rcnn if isinstance(rcnn, (list, tuple)) else [rcnn]):
        if isinstance(item, dict):
            item['score_thr'] = thr


def _strip_pretrained(node):
    if isinstance(node, dict):
        init = node.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            node['init_cfg'] = None  # random init: nothing is read or downloaded
        for value in node.values():
            _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)


def _head_classes(model, part):
    """``num_classes`` of the first submodule whose name contains ``part`` (None if absent)."""
    for name, module in model.named_modules():
        n = getattr(module, 'num_classes', None)
        if part in name and isinstance(n, int):
            return n
    return None


def synthetic_batch(size, seed=0, with_gt=False, num_classes=80, num_boxes=3, sem_classes=None):
    """One random image (uint8 CHW, as the pipeline packs it) with metainfo, optionally GT.

    GT: ``num_boxes`` boxes of at least ~48 px with an elliptical mask each, random
    labels, and a random semantic map when ``sem_classes`` is given.
    """
    from mmengine.structures import InstanceData, PixelData

    from cascade_seg.structures import DetDataSample
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(
        img_id=0, img_path=None, ori_shape=(h, w), img_shape=(h, w), scale_factor=(1.0, 1.0),
        flip=False, flip_direction=None, pad_shape=(h, w)))
    if with_gt:
        rs = np.random.RandomState(seed + 1)
        yy, xx = np.mgrid[0:h, 0:w]
        boxes, masks = [], []
        for _ in range(num_boxes):
            bw = rs.uniform(min(48, 0.3 * w), 0.6 * w)
            bh = rs.uniform(min(48, 0.3 * h), 0.6 * h)
            x1, y1 = rs.uniform(0, w - bw), rs.uniform(0, h - bh)
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            cx, cy = x1 + bw / 2, y1 + bh / 2
            masks.append(((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1)
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor(np.array(boxes), dtype=torch.float32),
            labels=torch.from_numpy(rs.randint(0, num_classes, num_boxes)).long(),
            masks=torch.from_numpy(np.stack(masks)))
        sample.ignored_instances = InstanceData(
            bboxes=torch.zeros((0, 4)), labels=torch.zeros((0, ), dtype=torch.long),
            masks=torch.zeros((0, h, w), dtype=torch.bool))
        if sem_classes:
            sem = rs.randint(0, sem_classes, size=(1, h, w))
            sample.gt_sem_seg = PixelData(sem_seg=torch.from_numpy(sem).long())
    return dict(inputs=[img], data_samples=[sample])


def build_benchmark_model(cfg, checkpoint=None, score_thr=0.0, seed=0):
    """Model from ``cfg`` (path or Config) with random init or ``checkpoint`` weights."""
    from mmengine.registry import init_default_scope

    from cascade_seg.engine.runner_utils import load_config
    from cascade_seg.registry import MODELS
    cfg = load_config(cfg)
    init_default_scope(cfg.get('default_scope', 'cascade_seg'))
    _strip_pretrained(cfg.model)
    if score_thr is not None:
        set_score_thr(cfg.model, score_thr)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if checkpoint:
        from cascade_seg.engine.checkpoint import load_checkpoint
        load_checkpoint(model, checkpoint, strict=False)
    return model, cfg


def _maxrss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024  # bytes vs KiB


def _sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _timed(fn, data, warmup, runs, device):
    times, out = [], None
    for i in range(warmup + runs):
        batch = copy.deepcopy(data)
        _sync(device)
        t0 = time.perf_counter()
        out = fn(batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, out


def count_flops(model, data):
    """FLOPs of one inference (``torch.utils.flop_counter``; ops without a formula count 0)."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), plain_ops(), counter:
        model.test_step(copy.deepcopy(data))
    return int(counter.get_total_flops())


def _optim_wrapper(model, precision, device, lr):
    """SGD (momentum 0.9, weight decay 1e-4) in the wrapper of ``precision``."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from .optim_wrapper import AutocastOptimWrapper
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    if precision == 'fp32':
        return OptimWrapper(optimizer)
    if device.startswith('cuda'):
        return AmpOptimWrapper(optimizer=optimizer, loss_scale='dynamic',
                               dtype=precision_dtype(precision))
    return AutocastOptimWrapper(optimizer, dtype=precision_dtype(precision))


def benchmark(cfg, task='inference', checkpoint=None, img_size=512, threads=2, device='cpu',
              warmup=2, runs=5, score_thr=0.0, seed=0, num_boxes=3, flops=True, lr=0.0,
              precision=None, dets_out=None, fuse=True):
    """Time ``task`` ('inference' or 'train') of the model in ``cfg``; returns a flat dict.

    ``img_size`` is an int or (h, w). Inference reports s/img and img/s, training
    s/iter (data preprocessor + forward + backward + SGD step, lr 0 by default so
    every run does the same work). Peak memory: ``torch.cuda.max_memory_allocated``
    on GPU; on CPU the growth of the process's peak RSS (``getrusage`` ru_maxrss)
    during the timed runs, which misses memory already reached earlier in the
    process, plus the absolute peak RSS. ``precision`` (default: the config's ``precision``
    key, else fp32) is the autocast of both tasks, as tools/train.py and tools/test.py run them
    (engine/precision.py); the result says what ran. ``dets_out``: inference saves the last
    run's ``bboxes, scores, labels`` there (``torch.save``). ``fuse``: inference folds the
    BatchNorms into the convolutions first (models/fused_conv.py), as tools/test.py and the
    demos do.
    """
    if task not in ('inference', 'train'):
        raise ValueError(f"task must be 'inference' or 'train', got {task!r}")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, cfg = build_benchmark_model(cfg, checkpoint, score_thr, seed)
        model = model.to(device)
        requested = normalize_precision(precision) or normalize_precision(cfg.get('precision'))
        precision = set_inference_precision(model, requested, device)
        data = synthetic_batch(size, seed, with_gt=task == 'train',
                               num_classes=_head_classes(model, 'bbox_head') or 1,
                               num_boxes=num_boxes,
                               sem_classes=_head_classes(model, 'semantic_head'))
        result = dict(task=task, config=cfg.filename, device=device,
                      threads=torch.get_num_threads(), precision=precision,
                      img_size=list(size), warmup=warmup, runs=runs, score_thr=score_thr,
                      params=sum(p.numel() for p in model.parameters()),
                      torch=torch.__version__)
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        rss_before = _maxrss_mb()
        if task == 'inference':
            model.eval()
            result['folded_norms'] = fuse_for_inference(model) if fuse else 0
            with torch.no_grad():
                times, out = _timed(model.test_step, data, warmup, runs, device)
            pred = out[0].pred_instances
            result['num_dets'] = len(pred)
            if dets_out:
                torch.save({k: pred[k].detach().cpu() for k in ('bboxes', 'scores', 'labels')},
                           dets_out)
        else:
            model.train()
            optim = _optim_wrapper(model, precision, device, lr)
            times, log_vars = _timed(lambda d: model.train_step(d, optim), data, warmup, runs,
                                     device)
            result['loss'] = float(torch.as_tensor(log_vars['loss']).detach())
        med = statistics.median(times)
        result.update(times_s=[round(t, 4) for t in times], median_s=med,
                      mean_s=statistics.fmean(times))
        if task == 'inference':
            result['s_per_img'] = med
            result['img_per_s'] = 1.0 / med
        else:
            result['s_per_iter'] = med
        if device.startswith('cuda'):
            result['peak_mem_mb'] = torch.cuda.max_memory_allocated() / 2**20
            result['mem_method'] = 'torch.cuda.max_memory_allocated'
        else:
            peak = _maxrss_mb()
            result['peak_mem_mb'] = peak - rss_before
            result['peak_rss_mb'] = peak
            result['mem_method'] = 'growth of getrusage ru_maxrss over the timed runs'
        if flops:
            result['flops'] = count_flops(model, data)
            result['gflops'] = round(result['flops'] / 1e9, 3)
            result['flops_method'] = 'torch.utils.flop_counter.FlopCounterMode, one inference'
        return result
    finally:
        torch.set_num_threads(old_threads)


def match_detections(ref, other, iou_thr=0.9):
    """Fraction of the detections in ``ref`` matched one to one (greedily, best ``ref`` score
    first) by a detection of ``other`` with the same label and box IoU >= ``iou_thr``.
    ``ref``/``other``: dicts (or InstanceData) with ``bboxes, scores, labels``."""
    from torchvision.ops import box_iou
    n = len(ref['scores'])
    if n == 0:
        return 1.0
    if len(other['scores']) == 0:
        return 0.0
    iou = box_iou(ref['bboxes'].float(), other['bboxes'].float())
    iou[ref['labels'][:, None] != other['labels'][None, :]] = -1
    used = torch.zeros(iou.shape[1], dtype=torch.bool)
    matched = 0
    for i in torch.argsort(ref['scores'].float(), descending=True).tolist():
        row = iou[i].masked_fill(used, -1)
        j = int(row.argmax())
        if row[j] >= iou_thr:
            used[j] = True
            matched += 1
    return matched / n


def cpu_description():
    """``'<CPU model>, <n> logical CPUs'`` (from /proc/cpuinfo where there is one)."""
    import os
    import platform
    name = None
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    name = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return f'{name or platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs'


def side_by_side_header(threads, size, warmup, runs, rounds, pooling=''):
    """The first line of a side-by-side speed comparison: the machine and how it was timed."""
    import torch
    return (f'CPU: {cpu_description()}; {threads} threads per side; torch {torch.__version__}; '
            f'{size}x{size} random image, score threshold 0, warmup {warmup}, median of {runs} '
            f'runs x {rounds} round(s){pooling}; same weights on both sides')


def _anon_mb(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('RssAnon:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_measured(cmd, log, cwd=None, interval=0.005):
    """Run ``cmd`` with its output in the file ``log``; returns ``(returncode, peak RSS in MiB,
    wall seconds, peak anonymous RSS in MiB or None)``.

    Peak RSS is the process's own ``ru_maxrss`` (``os.wait4``: a fresh process per measurement,
    so its peak is its own, unlike ``RUSAGE_CHILDREN``). It counts the pages of the shared
    libraries mapped in, which vary by ~100-200 MiB between two virtualenvs of the same torch
    (page-cache residency), so the anonymous part (``RssAnon`` of /proc/<pid>/status: tensors,
    heap), sampled every ``interval`` s, is returned as well (None where /proc is missing).
    """
    import os
    import subprocess
    t0 = time.perf_counter()
    peak_anon = None
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            anon = _anon_mb(proc.pid)
            if anon is not None:
                peak_anon = anon if peak_anon is None else max(peak_anon, anon)
            time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss / (1024 * 1024) if sys.platform == 'darwin' else usage.ru_maxrss / 1024
    return proc.returncode, rss, time.perf_counter() - t0, peak_anon


def pool_rounds(cells):
    """One side's measurements over several rounds: all run times, the largest peak RSS, each
    round's median (for :func:`paired_ratio`); other keys from the last round."""
    out = dict(cells[-1])
    anon = [c['anon_mb'] for c in cells if c.get('anon_mb') is not None]
    out.update(times=[t for c in cells for t in c['times']],
               rss_mb=max(c['rss_mb'] for c in cells), anon_mb=max(anon) if anon else None,
               round_medians=[statistics.median(c['times']) for c in cells])
    return out


def paired_ratio(a, b):
    """Median over rounds of ``a / b`` (round medians measured back to back): robust to load
    that drifts between rounds, which pooling all runs is not."""
    return statistics.median(x / y for x, y in zip(a['round_medians'], b['round_medians']))


def format_result(r):
    """One human-readable line for a benchmark result."""
    speed = f'{r["img_per_s"]:.2f} img/s ({r["median_s"]:.3f} s/img, {r.get("num_dets")} dets)' \
        if r['task'] == 'inference' else f'{r["s_per_iter"]:.3f} s/iter'
    flops = f', {r["gflops"]:.1f} GFLOPs/img' if 'gflops' in r else ''
    return (f'{r["task"]}: {speed}, params {r["params"] / 1e6:.2f} M{flops}, '
            f'peak mem {r["peak_mem_mb"]:.0f} MB [{r["mem_method"]}], '
            f'{r["img_size"][0]}x{r["img_size"][1]}, {r["device"]}, {r["threads"]} threads, '
            f'{r.get("precision", "fp32")}')
