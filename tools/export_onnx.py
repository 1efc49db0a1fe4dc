#!/usr/bin/env python
"""Export Mask R-CNN, Cascade Mask R-CNN or HTC to ONNX and check it in onnxruntime:
python tools/export_onnx.py CONFIG [CHECKPOINT] --out model.onnx [--verify IMG ...]

One image per run, any size (dynamic height and width). What is inside the graph and what
stays outside (resize / normalise / pad before, box rescaling and mask pasting after) is in
docs/deployment.md. --verify runs PyTorch and onnxruntime on the images and prints how far
they agree."""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import cv2  # noqa: E402

from cascade_seg.apis import inference_detector, init_detector  # noqa: E402
from cascade_seg.deploy import OPSET, OnnxDetector, compare_detections, export_onnx  # noqa: E402
from cascade_seg.engine.runner_utils import DictAction  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Export a two-stage detector to ONNX')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='checkpoint (omit for random weights, e.g. to try the export)')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=OPSET,
                   help=f'ONNX opset (>= 16; default {OPSET})')
    p.add_argument('--image', help='example image to trace with (default: random at the test '
                                   'scale; the graph works for any size)')
    p.add_argument('--verify', nargs='+', metavar='IMG',
                   help='compare onnxruntime with PyTorch on these images')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def _as_dict(pred):
    out = {k: pred.get(k).detach().cpu().numpy() for k in ('bboxes', 'scores', 'labels')}
    if 'masks' in pred:
        out['masks'] = pred.masks.cpu().numpy()
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.opset < 16:
        raise SystemExit('--opset must be >= 16 (RoiAlign with half_pixel coordinates)')
    model = init_detector(args.config, args.checkpoint, device='cpu',
                          cfg_options=args.cfg_options)
    example = cv2.imread(args.image, cv2.IMREAD_COLOR) if args.image else None
    start = time.time()
    names = export_onnx(model, model.cfg, args.out, example_img=example, opset=args.opset)
    print(f'exported {args.out} (outputs {", ".join(names)}; opset {args.opset}) in '
          f'{time.time() - start:.1f} s')
    reports = []
    if args.verify:
        detector = OnnxDetector(args.out, model.cfg)
        for path in args.verify:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(path)
            ref = _as_dict(inference_detector(model, img).pred_instances)
            start = time.time()
            got = detector(img)
            took = time.time() - start
            r = compare_detections(ref, got)
            reports.append(r)
            masks = f', mask IoU min {r["min_mask_iou"]:.4f}' if 'min_mask_iou' in r else ''
            print(f'{path} {img.shape[1]}x{img.shape[0]}: {r["matched"]}/{r["num_ref"]} PyTorch '
                  f'detections matched by onnxruntime ({r["num_other"]}){masks}, max box diff '
                  f'{r["max_box_diff"]:.2g} px, max score diff {r["max_score_diff"]:.2g}; '
                  f'onnxruntime {took * 1000:.0f} ms')
    return reports


if __name__ == '__main__':
    main()
