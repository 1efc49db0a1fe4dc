#!/usr/bin/env python
"""Confusion matrix of test predictions:
python tools/test.py CONFIG CKPT --out preds.pkl
python tools/confusion_matrix.py CONFIG preds.pkl SAVE_DIR [--score-thr 0.3] [--tp-iou-thr 0.5]"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402

from cascade_seg.analysis import calculate_confusion_matrix, plot_confusion_matrix  # noqa: E402
from cascade_seg.analysis.browse import build_split_dataset  # noqa: E402
from cascade_seg.engine.dump_results import load_predictions  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Confusion matrix from test.py --out predictions')
    p.add_argument('config', help='the test config')
    p.add_argument('prediction_path', help='the .pkl of tools/test.py --out')
    p.add_argument('save_dir', help='where confusion_matrix.png (and .csv) go')
    p.add_argument('--show', action='store_true', help='show the matrix (where there is a '
                                                       'display)')
    p.add_argument('--color-theme', default='plasma', help='matplotlib colour map')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detections below this score are left out')
    p.add_argument('--tp-iou-thr', type=float, default=0.5,
                   help='IoU from which a detection matches a ground-truth box')
    p.add_argument('--nms-iou-thr', type=float, default=None,
                   help='re-run class-wise NMS with this IoU threshold first')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    dataset = build_split_dataset(cfg, 'test')
    results = load_predictions(args.prediction_path)
    matrix = calculate_confusion_matrix(dataset, results, args.score_thr, args.nms_iou_thr,
                                        args.tp_iou_thr)
    labels = tuple(dataset.metainfo['classes']) + ('background', )
    plot_confusion_matrix(matrix, labels, save_dir=args.save_dir, show=args.show,
                          color_theme=args.color_theme)
    np.savetxt(osp.join(args.save_dir, 'confusion_matrix.csv'), matrix, fmt='%d', delimiter=',',
               header='rows: ground truth, columns: prediction; ' + ', '.join(labels))
    width = max(len(n) for n in labels)
    print(' ' * (width + 1) + ' '.join(f'{n[:6]:>6}' for n in labels))
    for name, row in zip(labels, matrix):
        print(f'{name:>{width}} ' + ' '.join(f'{v:6d}' for v in row))
    print(f'saved {osp.join(args.save_dir, "confusion_matrix.png")} and .csv')
    return matrix


if __name__ == '__main__':
    main()
