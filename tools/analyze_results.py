#!/usr/bin/env python
"""The best and worst test images by their own COCO AP:
python tools/test.py CONFIG CKPT --out preds.pkl
python tools/analyze_results.py CONFIG preds.pkl SHOW_DIR [--topk 20] [--metric bbox|segm]
Writes SHOW_DIR/good/ and SHOW_DIR/bad/: ground truth left, predictions right,
named <image>_<AP>.<ext>."""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from cascade_seg.analysis import image_aps, rank_images, save_ranked_images  # noqa: E402
from cascade_seg.analysis.browse import build_split_dataset  # noqa: E402
from cascade_seg.engine.dump_results import load_predictions  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Best / worst images of test predictions by AP')
    p.add_argument('config', help='the test config')
    p.add_argument('prediction_path', help='the .pkl of tools/test.py --out')
    p.add_argument('show_dir', help='good/ and bad/ are written here')
    p.add_argument('--show', action='store_true', help='show them (where there is a display)')
    p.add_argument('--wait-time', type=float, default=0, help='seconds per image shown')
    p.add_argument('--topk', type=int, default=20, help='how many best and worst images')
    p.add_argument('--show-score-thr', type=float, default=0,
                   help='draw predictions scoring at least this')
    p.add_argument('--metric', choices=['bbox', 'segm'], default='bbox',
                   help='rank by box AP (MMDetection\'s) or mask AP')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    dataset = build_split_dataset(cfg, 'test')
    results = load_predictions(args.prediction_path)
    aps = image_aps(cfg, dataset, results, args.metric)
    good, bad = rank_images(aps, args.topk)
    for name, ranked in (('good', good), ('bad', bad)):
        out_dir = osp.join(args.show_dir, name)
        save_ranked_images(dataset, results, ranked, out_dir, args.show_score_thr, args.show,
                           args.wait_time)
        print(f'{name}: ' + ', '.join(f'image {i} {args.metric} AP {ap:.3f}' for i, ap in ranked)
              + f' -> {out_dir}')
    return good, bad


if __name__ == '__main__':
    main()
