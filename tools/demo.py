#!/usr/bin/env python
"""Run a detector on one image and save the drawing:
python tools/demo.py IMAGE CONFIG CHECKPOINT --out-file out.png [--score-thr 0.3] [--device cpu]"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import cv2  # noqa: E402

from cascade_seg.apis import inference_detector, init_detector  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction  # noqa: E402
from cascade_seg.visualization import draw_det_data_sample  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Draw a detector\'s predictions on an image')
    p.add_argument('image', help='image file')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='checkpoint file (omit for random weights)')
    p.add_argument('--out-file', default='demo_out.png', help='where to write the drawing')
    p.add_argument('--score-thr', type=float, default=0.3, help='hide detections below this')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = init_detector(args.config, args.checkpoint, device=args.device,
                          cfg_options=args.cfg_options, fuse=True)
    result = inference_detector(model, args.image)
    img = cv2.imread(args.image, cv2.IMREAD_COLOR)
    drawn = draw_det_data_sample(img, result, model.dataset_meta.get('classes'), args.score_thr)
    os.makedirs(osp.dirname(osp.abspath(args.out_file)), exist_ok=True)
    cv2.imwrite(args.out_file, drawn)
    pred = result.pred_instances
    kept = int((pred.scores >= args.score_thr).sum()) if 'scores' in pred else 0
    print(f'{kept} detections (score >= {args.score_thr}) drawn to {args.out_file}')
    return result


if __name__ == '__main__':
    main()
