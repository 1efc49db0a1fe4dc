#!/usr/bin/env python
"""Evaluate a checkpoint: python tools/test.py CONFIG CHECKPOINT [--out preds.pkl|metrics.json]

A checkpoint that does not fit the model (missing, unexpected or differently shaped
weights) or holds NaN/Inf weights is an error: nothing is evaluated and no metrics file is
written. --partial-load evaluates with the weights that fit.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.engine.runner_utils import (  # noqa: E402
    DictAction, add_custom_hook, add_test_outputs, apply_tta, build_runner, close_distributed,
    load_config, save_metrics)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where logs and metrics.json go (default work_dirs/<config>)')
    p.add_argument('--out', help='*.pkl: also dump the raw predictions (masks as RLE); *.json: '
                                 'write the metrics there instead of <work_dir>/metrics.json')
    p.add_argument('--partial-load', action='store_true',
                   help='evaluate even if the checkpoint does not fit the model (load the '
                        'weights that fit, report the rest); by default that is an error')
    p.add_argument('--show', action='store_true',
                   help='show each image with its predictions in a window (where there is a '
                        'display; otherwise it says so and shows nothing)')
    p.add_argument('--show-dir', help='save the images with predictions drawn into this folder, '
                                      'relative to <work_dir>/<timestamp>/ unless absolute '
                                      '(keeping their paths below the image folder)')
    p.add_argument('--wait-time', type=float, default=2,
                   help='--show: seconds per image (0: until a key is pressed)')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='score threshold for --show / --show-dir')
    p.add_argument('--tta', action='store_true',
                   help='test-time augmentation: the config\'s tta_model and tta_pipeline '
                        '(default: flip at the test scale, merged by NMS)')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help="inference precision (default: the config's `precision` key, else fp32)")
    p.add_argument('--amp', action='store_true',
                   help="alias of the device's mixed precision (bf16 on CPU, fp16 on GPU)")
    p.add_argument('--no-fuse', action='store_true',
                   help='keep the BatchNorms (default: folded into the convolutions before '
                        'testing, same predictions, faster on CPU)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config keys, e.g. test_dataloader.batch_size=1')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out and not args.out.endswith(('.pkl', '.pickle', '.json')):
        p.error('--out must end with .pkl or .json')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    dump_pkl = args.out if args.out and not args.out.endswith('.json') else None
    if args.tta:
        apply_tta(cfg)
    if not args.no_fuse:
        add_custom_hook(cfg, dict(type='FuseForInferenceHook'))
    add_test_outputs(cfg, show_dir=args.show_dir, score_thr=args.score_thr, out_pkl=dump_pkl,
                     show=args.show, wait_time=args.wait_time)
    runner = build_runner(cfg, work_dir=args.work_dir, launcher=args.launcher,
                          load_from=args.checkpoint, strict_load=not args.partial_load,
                          precision=args.precision, amp=args.amp)
    metrics = runner.test()
    if runner.rank == 0:
        path = args.out if args.out and args.out.endswith('.json') else \
            osp.join(runner.work_dir, 'metrics.json')
        save_metrics(metrics, path)
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, tuple))},
                         indent=2, default=str))
        print(f'metrics written to {path}')
    close_distributed()  # a no-op unless launched distributed
    return metrics


if __name__ == '__main__':
    main()
