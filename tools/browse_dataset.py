#!/usr/bin/env python
"""Draw a dataset's ground truth after the pipeline (what the model is trained on):
python tools/browse_dataset.py CONFIG [--output-dir DIR] [--not-show] [--show-interval S]"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.analysis import browse_dataset  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Browse a dataset (ground truth after the pipeline)')
    p.add_argument('config', help='config file path')
    p.add_argument('--output-dir', default=None, help='write the drawings here (needed where '
                                                      'there is no display)')
    p.add_argument('--not-show', action='store_true', help='do not open a window')
    p.add_argument('--show-interval', type=float, default=2, help='seconds per image shown')
    p.add_argument('--split', choices=['train', 'val', 'test'], default='train',
                   help='which dataloader\'s dataset and pipeline (default: train)')
    p.add_argument('--max-images', type=int, default=None, help='stop after this many')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config keys, e.g. train_dataloader.dataset.data_root=x/')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    n = browse_dataset(cfg, output_dir=args.output_dir, show=not args.not_show,
                       show_interval=args.show_interval, split=args.split,
                       max_images=args.max_images)
    where = f' to {args.output_dir}' if args.output_dir else ''
    print(f'\n{n} images of the {args.split} set drawn{where}')
    return n


if __name__ == '__main__':
    main()
