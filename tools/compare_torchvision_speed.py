#!/usr/bin/env python
"""Side-by-side CPU speed and memory of our Mask R-CNN R50-FPN and torchvision's
``maskrcnn_resnet50_fpn`` on the same weights, in fp32 and under the same bf16 autocast:

    python tools/compare_torchvision_speed.py [--img-size 512] [--threads 2] [--runs 5]
        [--rounds 2] [--precisions fp32 bf16] [--tasks inference train]
    python tools/compare_torchvision_speed.py --quick          # smoke test

Like for like:
- **Same weights.** torchvision's model is built seeded in its COCO-training setting (frozen
  BatchNorm, stem and first stage frozen, i.e. ``trainable_backbone_layers=3``), saved, and
  converted with our converter (``convert_torchvision``, checked to fit our model key for key);
  our side runs configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py (torchvision's inference
  semantics) on the converted file, torchvision's side loads the saved one.
- **Same work.** The same seeded random uint8 image (torchvision gets it as RGB floats in
  [0, 1], ours as the BGR uint8 our pipeline gives); torchvision's transform does not resize
  (``min_size = max_size =`` the image size); score thresholds 0 on both sides so the mask path
  runs on 100 detections. Training: one step of forward, backward and SGD (lr 0) with the same
  3 random GT instances.
- **Same precision.** fp32, and bf16: ``torch.autocast('cpu', dtype=torch.bfloat16)`` around
  the forward on both sides (ours through ``--precision bf16``).
- **Same inference transform.** At inference both sides fold the frozen BatchNorms into the
  convolutions (ours: ``fuse_for_inference``, as tools/test.py, tools/benchmark.py and the
  demo do; torchvision, which has no such option: the same fold applied to its ResNet by
  :func:`fold_torchvision_norms`); ``--no-fuse`` keeps them on both sides.
- **Memory.** Each (side, task, precision) runs in a fresh subprocess; its peak RSS is that
  process's ``ru_maxrss``. The sides alternate, round by round.

Prints the CPU model and threads, and per precision the median over rounds of each side's
median time, the ratio, the detections (with the fraction of torchvision's that ours match:
same label, box IoU >= 0.9) and the peak RSS.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import statistics
import sys
import tempfile
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from cascade_seg.engine.benchmark import (match_detections, side_by_side_header,  # noqa: E402
                                          paired_ratio, pool_rounds, run_measured,
                                          synthetic_batch)

CONFIG = 'configs/mask_rcnn/mask-rcnn_r50_fpn_torchvision.py'
SIDES = ('ours', 'torchvision')


def build_torchvision(size, seed=0):
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    torch.manual_seed(seed)
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    model = MaskRCNN(backbone, num_classes=91, min_size=size, max_size=size,
                     box_score_thresh=0.0, box_detections_per_img=100)
    calibrate_frozen_norms(model, size, seed)
    with torch.no_grad():  # decisive class scores (random init gives ~1/91 each: near-ties
        model.roi_heads.box_predictor.cls_score.weight.mul_(15.0)  # reorder on any rounding)
    return model


def _image(size, seed=0):
    """The seeded image as torchvision takes it: RGB floats in [0, 1] (``synthetic_batch``'s
    uint8 image is BGR, as our pipeline's)."""
    return synthetic_batch((size, size), seed)['inputs'][0].flip(0).float() / 255


def calibrate_frozen_norms(model, size, seed=0):
    """Random affine frozen BatchNorms whose statistics are those of the seeded image (what
    the parity tests and MMDetection's reference ``--randomize-norm`` do): activations stay
    O(1), and every residual branch counts."""
    from torchvision.ops import FrozenBatchNorm2d
    g = torch.Generator().manual_seed(seed + 1)
    hooks = []

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                hooks.append(m.register_forward_pre_hook(calibrate))
        model.eval()
        model.backbone.body(model.transform([_image(size, seed)])[0].tensors)
    for h in hooks:
        h.remove()


def _autocast(precision):
    import contextlib
    return torch.autocast('cpu', dtype=torch.bfloat16) if precision == 'bf16' else \
        contextlib.nullcontext()


def fold_torchvision_norms(model):
    """Fold the FrozenBatchNorms of torchvision's ResNet into their convolutions (what
    ``fuse_for_inference`` does to ours; torchvision's blocks call ``bn(conv(x))``, so a folded
    norm becomes the identity)."""
    from torchvision.models.resnet import Bottleneck

    from cascade_seg.models.fused_conv import fold_into
    body = model.backbone.body
    count = fold_into(body, body.conv1, 'bn1')
    for block in body.modules():
        if isinstance(block, Bottleneck):
            count += sum(fold_into(block, getattr(block, f'conv{i}'), f'bn{i}')
                         for i in (1, 2, 3))
            if block.downsample is not None:
                count += fold_into(block.downsample, block.downsample[0], '1')
    return count


def time_torchvision(args):
    """The torchvision side (run as ``--side torchvision`` in its own process)."""
    torch.set_num_threads(args.threads)
    model = build_torchvision(args.img_size)
    model.load_state_dict(torch.load(args.weights, map_location='cpu', weights_only=True))
    size = args.img_size
    data = synthetic_batch((size, size), 0, with_gt=True, num_classes=90, num_boxes=3)
    img = _image(size)
    gt = data['data_samples'][0].gt_instances
    target = dict(boxes=gt.bboxes, labels=gt.labels + 1, masks=gt.masks.to(torch.uint8))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    times, out = [], None
    folded = 0
    if args.task == 'inference' and not args.no_fuse:
        model.eval()
        folded = fold_torchvision_norms(model)
    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        if args.task == 'inference':
            model.eval()
            with torch.no_grad(), _autocast(args.precision):
                out = model([img])[0]
        else:
            model.train()
            with _autocast(args.precision):
                loss = sum(model([img], [target]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    result = dict(times_s=[round(t, 4) for t in times], params=sum(
        p.numel() for p in model.parameters()), precision=args.precision, folded_norms=folded)
    if out is not None:
        result['num_dets'] = len(out['boxes'])
        if args.dump_dets:  # torchvision's labels are 1-based COCO category ids
            torch.save(dict(bboxes=out['boxes'].float(), scores=out['scores'].float(),
                            labels=out['labels']), args.dump_dets)
    with open(args.json, 'w') as f:
        json.dump(dict(results=[result]), f)


def prepare_weights(args, tmp):
    """torchvision's seeded model saved, and our conversion of it (checked to fit)."""
    from cascade_seg.engine.benchmark import build_benchmark_model
    from cascade_seg.utils import align_to_model, convert_torchvision
    tv_path, ours_path = osp.join(tmp, 'torchvision.pth'), osp.join(tmp, 'ours.pth')
    sd = build_torchvision(args.img_size).state_dict()
    torch.save(sd, tv_path)
    converted, unmapped = convert_torchvision(sd)
    ours, _ = build_benchmark_model(osp.join(ROOT, CONFIG))
    converted, report = align_to_model(converted, ours.state_dict(), unmapped)
    if not report.ok:
        raise RuntimeError(f'the converted torchvision weights do not fit our model:\n{report}')
    torch.save(dict(state_dict=converted, meta=dict(source='torchvision maskrcnn_resnet50_fpn, '
                                                           'seeded')), ours_path)
    return dict(ours=ours_path, torchvision=tv_path)


def side_cmd(side, task, precision, args, weights, out, dets):
    common = ['--threads', str(args.threads), '--warmup', str(args.warmup), '--runs',
              str(args.runs), '--precision', precision, '--json', out]
    if side == 'ours':
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'benchmark.py'), CONFIG, '--checkpoint',
               weights, '--task', task, '--img-size', str(args.img_size), '--no-flops'] + common
    else:
        cmd = [sys.executable, osp.abspath(__file__), '--side', 'torchvision', '--weights',
               weights, '--task', task, '--img-size', str(args.img_size)] + common
    if args.no_fuse:
        cmd.append('--no-fuse')
    return cmd + (['--dump-dets', dets] if task == 'inference' else [])


def measure(side, task, precision, args, weights, tmp, r):
    stem = osp.join(tmp, f'{side}_{task}_{precision}_{r}')
    cmd = side_cmd(side, task, precision, args, weights[side], stem + '.json', stem + '.dets')
    rc, rss, _, anon = run_measured(cmd, stem + '.log', cwd=ROOT)
    if rc != 0:
        with open(stem + '.log') as f:
            raise RuntimeError(f'{side} {task} {precision} failed (rc {rc}):\n{f.read()[-3000:]}')
    with open(stem + '.json') as f:
        res = json.load(f)['results'][0]
    return dict(times=res['times_s'], params=res['params'], ndet=res.get('num_dets'),
                rss_mb=rss, anon_mb=anon, dets=stem + '.dets' if task == 'inference' else None)


def _mb(x):
    return '-' if x is None else f'{x:.0f}'


def _matched(cell):
    ref, ours = cell['torchvision']['dets'], cell['ours']['dets']
    if not (ref and osp.isfile(ref) and osp.isfile(ours)):
        return '-'
    ref = torch.load(ref, weights_only=True)
    ref['labels'] = ref['labels'] - 1  # torchvision's label 1 is our class 0
    return f'{100 * match_detections(ref, torch.load(ours, weights_only=True)):.0f}%'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--img-size', type=int, default=512)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'], choices=['fp32', 'bf16'])
    p.add_argument('--tasks', nargs='+', default=['inference', 'train'],
                   choices=['inference', 'train'])
    p.add_argument('--quick', action='store_true',
                   help='smoke test: 128x128, no warmup, 1 run, 1 round')
    p.add_argument('--work-dir', default=None, help='keep weights, logs and outputs here')
    p.add_argument('--markdown', default=None, help='write the table here')
    p.add_argument('--no-fuse', action='store_true',
                   help='inference: keep the BatchNorms on both sides (default: both fold them '
                        'into the convolutions)')
    # one side in its own process (used by the comparison itself)
    p.add_argument('--side', choices=['torchvision'], help=argparse.SUPPRESS)
    p.add_argument('--weights', help=argparse.SUPPRESS)
    p.add_argument('--task', default='inference', help=argparse.SUPPRESS)
    p.add_argument('--precision', default='fp32', help=argparse.SUPPRESS)
    p.add_argument('--json', help=argparse.SUPPRESS)
    p.add_argument('--dump-dets', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.side:
        return time_torchvision(args)
    if args.quick:
        args.img_size, args.warmup, args.runs, args.rounds = 128, 0, 1, 1

    header = side_by_side_header(args.threads, args.img_size, args.warmup, args.runs,
                                 args.rounds) + \
        ('; inference with the BatchNorms kept on both sides' if args.no_fuse else
         '; inference with the BatchNorms folded into the convolutions on both sides')
    print(header, flush=True)
    tmp = args.work_dir or tempfile.mkdtemp(prefix='compare_tv_')
    os.makedirs(tmp, exist_ok=True)
    rows = []
    try:
        weights = prepare_weights(args, tmp)
        for precision in args.precisions:
            for task in args.tasks:
                rounds = {s: [] for s in SIDES}
                for r in range(args.rounds):
                    for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                        rounds[side].append(measure(side, task, precision, args, weights, tmp,
                                                    r))
                    print(f'{precision} {task} round {r + 1}: ' + ' '.join(
                        f'{s} {statistics.median(rounds[s][-1]["times"]):.3f}s '
                        f'({rounds[s][-1]["rss_mb"]:.0f} MiB)' for s in SIDES), flush=True)
                rows.append((precision, task, {s: pool_rounds(rounds[s]) for s in SIDES}))
        lines = [header, '',
                 '| precision | task | ours s | torchvision s | ratio ours/torchvision | '
                 'detections ours / torchvision (matched) | peak RSS ours / torchvision (MiB) '
                 '[anonymous] |',
                 '|---|---|---:|---:|---:|---|---:|']
        for precision, task, cell in rows:
            o, t = (statistics.median(cell[s]['times']) for s in SIDES)
            dets = (f'{cell["ours"]["ndet"]} / {cell["torchvision"]["ndet"]} ({_matched(cell)})'
                    if task == 'inference' else '-')
            lines.append(f'| {precision} | {task} | {o:.3f} | {t:.3f} | '
                         f'**{paired_ratio(cell["ours"], cell["torchvision"]):.2f}** | {dets} | '
                         f'{cell["ours"]["rss_mb"]:.0f} / {cell["torchvision"]["rss_mb"]:.0f} '
                         f'[{_mb(cell["ours"]["anon_mb"])} / {_mb(cell["torchvision"]["anon_mb"])}]'
                         ' |')
        text = '\n'.join(lines)
        print('\n' + text)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(text + '\n')
    finally:
        if args.work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == '__main__':
    main()
