#!/usr/bin/env python
"""Print the whole config as the tools use it (bases merged, --cfg-options applied, the
class count and class names resolved from the dataset):
python tools/print_config.py CONFIG [--cfg-options k=v ...] [--save-path resolved.py]"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.engine.runner_utils import DictAction, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Print the whole (resolved) config')
    p.add_argument('config', help='config file path')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config keys, e.g. model.roi_head.num_classes=3')
    p.add_argument('--save-path', default=None, help='also write it to this .py file')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    print(f'Config:\n{cfg.pretty_text}')
    if args.save_path:
        cfg.dump(args.save_path)
        print(f'saved to {args.save_path}')
    return cfg


if __name__ == '__main__':
    main()
