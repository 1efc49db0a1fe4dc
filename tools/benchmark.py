#!/usr/bin/env python
"""Speed, memory, parameters and FLOPs of a model on a synthetic image:
python tools/benchmark.py CONFIG --task inference|train|all [--img-size 512] [--threads 2] ...

Comparable side by side with ../shared/mmdet_ref/mmdet_ref.py (same input, same
score threshold 0 so ~100 detections reach the mask head, median of --runs)."""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.engine.benchmark import benchmark, format_result  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Benchmark a detector on synthetic input')
    p.add_argument('config')
    p.add_argument('--checkpoint', default=None, help='weights (default: random init)')
    p.add_argument('--task', choices=['inference', 'train', 'all'], default='inference')
    p.add_argument('--img-size', type=int, nargs='+', default=[512], help='H [W]')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help="autocast of inference and training (default: the config's `precision` "
                        'key, else fp32); fp16 needs CUDA')
    p.add_argument('--amp', action='store_true',
                   help="alias of the device's mixed precision (bf16 on CPU, fp16 on GPU)")
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--score-thr', default='0.0',
                   help="test_cfg.rcnn.score_thr override (default 0: max_per_img detections "
                        "so the mask head runs on ~100 boxes); 'cfg' keeps the config's value")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-flops', action='store_true', help='skip the FLOP count')
    p.add_argument('--no-fuse', action='store_true',
                   help='inference: keep the BatchNorms (default: folded into the convolutions, '
                        'as the inference API and tools/test.py run)')
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--dump-dets', default=None,
                   help="inference: save the last run's bboxes, scores and labels (torch.save)")
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    p.add_argument('--verbose', action='store_true', help='keep mmengine INFO logs')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:  # like the reference script; only possible before any parallel work
        import torch
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    if not args.verbose:  # model init logs one line per parameter
        import logging

        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().setLevel(logging.WARNING)
    cfg = load_config(args.config, args.cfg_options)
    size = args.img_size if len(args.img_size) == 2 else args.img_size * 2
    score_thr = None if args.score_thr == 'cfg' else float(args.score_thr)
    tasks = ['inference', 'train'] if args.task == 'all' else [args.task]
    precision = args.precision
    if precision is None and args.amp:
        precision = 'fp16' if args.device.startswith('cuda') else 'bf16'
    results = []
    for task in tasks:
        r = benchmark(cfg, task=task, checkpoint=args.checkpoint, img_size=tuple(size),
                      threads=args.threads, device=args.device, warmup=args.warmup,
                      runs=args.runs, score_thr=score_thr, seed=args.seed,
                      flops=not args.no_flops, precision=precision,
                      dets_out=args.dump_dets if task == 'inference' else None,
                      fuse=not args.no_fuse)
        print(format_result(r), flush=True)
        results.append(r)
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, results=results), f, indent=1)
    return results


if __name__ == '__main__':
    main()
