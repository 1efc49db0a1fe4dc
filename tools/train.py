#!/usr/bin/env python
"""Train a detector: python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
[--precision fp32|bf16|fp16] ..."""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.engine.runner_utils import (  # noqa: E402
    DictAction, build_runner, close_distributed)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train a detector')
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs and checkpoints go (default work_dirs/<config>)')
    p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='resume from CKPT, or from the latest checkpoint in the work dir '
                        'when no path is given')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help="numeric precision (default: the config's `precision` key, else fp32): "
                        'bf16 autocast on CPU or GPU, fp16 (GPU only) with loss scaling')
    p.add_argument('--amp', action='store_true',
                   help='alias of the device\'s mixed precision: --precision bf16 on CPU, fp16 '
                        'on GPU')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the learning rate by the total batch size / '
                        'auto_scale_lr.base_batch_size of the config')
    p.add_argument('--seed', type=int, default=None, help='random seed')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config keys, e.g. train_cfg.max_epochs=2')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    # set by the deprecated torch.distributed.launch
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          resume=args.resume, amp=args.amp, launcher=args.launcher, seed=args.seed,
                          auto_scale_lr=args.auto_scale_lr, precision=args.precision)
    runner.train()
    close_distributed()  # a no-op unless launched distributed
    return runner


if __name__ == '__main__':
    main()
