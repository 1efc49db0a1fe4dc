#!/usr/bin/env python
"""Side-by-side CPU speed of our Mask R-CNN R50-FPN and torchvision's maskrcnn_resnet50_fpn:
python tools/compare_torchvision_speed.py [--img-size 512] [--threads 2] [--runs 5] [--rounds 2]

Both models are built with random weights in their COCO-training setting (frozen BN,
stem + first stage frozen, i.e. torchvision's trainable_backbone_layers=3) and get the same
seeded random uint8 image. Our side uses configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py
(torchvision's inference semantics) through tools/benchmark.py's code path; torchvision's
transform is set not to resize (min_size = max_size = image size). Score thresholds are 0 on
both sides so the mask path runs on 100 detections. Training: one step of forward, backward
and SGD (lr 0) with 3 random boxes. The two sides alternate, round by round; we report the
median over rounds of each side's median time.
"""
import argparse
import statistics
import sys
import time
import os.path as osp

import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..'))

from cascade_seg.engine.benchmark import benchmark, synthetic_batch  # noqa: E402

CONFIG = 'configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py'


def build_torchvision(size, seed=0):
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    torch.manual_seed(seed)
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    return MaskRCNN(backbone, num_classes=91, min_size=size, max_size=size, box_score_thresh=0.0,
                    box_detections_per_img=100)


def time_torchvision(model, task, size, warmup, runs, seed=0):
    data = synthetic_batch((size, size), seed, with_gt=True, num_classes=90, num_boxes=3)
    img = data['inputs'][0].float() / 255
    gt = data['data_samples'][0].gt_instances
    target = dict(boxes=gt.bboxes, labels=gt.labels + 1, masks=gt.masks.to(torch.uint8))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    times, dets = [], None
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        if task == 'inference':
            model.eval()
            with torch.no_grad():
                dets = len(model([img])[0]['boxes'])
        else:
            model.train()
            loss = sum(model([img], [target]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), dets


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--img-size', type=int, default=512)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--rounds', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tv_model = build_torchvision(args.img_size)
    rows = []
    for task in ('inference', 'train'):
        ours, theirs, ours_dets, tv_dets = [], [], None, None
        for r in range(args.rounds):
            sides = ['ours', 'tv'] if r % 2 == 0 else ['tv', 'ours']
            for side in sides:
                if side == 'ours':
                    res = benchmark(CONFIG, task=task, img_size=args.img_size, threads=args.threads,
                                    warmup=args.warmup, runs=args.runs, flops=False)
                    ours.append(res['median_s'])
                    ours_dets = res.get('num_dets', ours_dets)
                else:
                    t, d = time_torchvision(tv_model, task, args.img_size, args.warmup, args.runs)
                    theirs.append(t)
                    tv_dets = d if d is not None else tv_dets
            print(f'{task} round {r + 1}: ours {ours[-1]:.3f}s torchvision {theirs[-1]:.3f}s',
                  flush=True)
        rows.append((task, statistics.median(ours), statistics.median(theirs), ours_dets, tv_dets))
    params_tv = sum(p.numel() for p in tv_model.parameters())
    print(f'\nCPU, {args.threads} threads, {args.img_size}x{args.img_size} random image, '
          f'score threshold 0, warmup {args.warmup}, median of {args.runs} runs x '
          f'{args.rounds} rounds; torchvision params {params_tv / 1e6:.1f} M\n')
    print('| task | ours s | torchvision s | ratio ours/torchvision | detections ours / torchvision |')
    print('|---|---:|---:|---:|---|')
    for task, o, t, od, td in rows:
        dets = f'{od} / {td}' if task == 'inference' else '-'
        print(f'| {task} | {o:.3f} | {t:.3f} | **{o / t:.2f}** | {dets} |')


if __name__ == '__main__':
    main()
