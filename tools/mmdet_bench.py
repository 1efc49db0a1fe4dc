#!/usr/bin/env python
"""MMDetection's side of tools/compare_mmdet_speed.py; runs under the MMDetection 3.3 reference
interpreter (../shared/mmdet_ref/README.md), never under the project's (it imports no
cascade_seg code).

    REF_PY tools/mmdet_bench.py MODEL --save-weights mmdet.pth [--size 512]
    REF_PY tools/mmdet_bench.py MODEL --weights mmdet.pth --task inference|train
        [--precision fp32|bf16] [--threads 2] [--warmup 1] [--runs 5] [--json out.json]
        [--dump-dets dets.pt]

The model is the reference script's (``mmdet_ref.build_model``: seeded random weights,
``--randomize-norm`` BatchNorms, score threshold 0); ``--save-weights`` writes its state dict,
which the comparison converts for our side, and ``--weights`` loads that very file (strictly),
so both sides run the same weights. Inference times ``model.test_step`` on the reference's
seeded image; training times ``model.train_step`` (data preprocessor, loss, backward, SGD at
lr 0) on its seeded image with 3 GT instances. ``--precision bf16`` runs the forward under
``torch.autocast('cpu', dtype=torch.bfloat16)`` as our AutocastOptimWrapper does (the
backward and the optimizer step outside it), and inference entirely under it.

mmcv 2.1's compiled CPU ops (NMS, RoIAlign) have float32 kernels only and no autocast rule, so
under bf16 autocast MMDetection 3.3 stops with "expected scalar type Float but found BFloat16".
With ``--precision bf16`` every mmcv extension function therefore gets what torchvision's
autocast rules give torchvision's ops: its low-precision tensor arguments converted to float32
for the call (and copied back, as mmcv passes its outputs as arguments). Nothing else changes.
"""
import argparse
import contextlib
import copy
import json
import os
import os.path as osp
import statistics
import sys
import time
import warnings

import torch

DEFAULT_REF_SCRIPT = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                              'shared', 'mmdet_ref', 'mmdet_ref.py')


def _autocast(precision):
    if precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast('cpu', dtype=dict(bf16=torch.bfloat16)[precision])


def float32_mmcv_ops():
    """Wrap every function of mmcv's compiled extension so that its bfloat16/float16 tensor
    arguments are float32 during the call (output arguments, written in place, are copied
    back; tensors that require grad are inputs and are left alone)."""
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', [])  # the module object every mmcv op holds

    def wrap(fn):
        def call(*args, **kwargs):
            low = [a for a in list(args) + list(kwargs.values())
                   if torch.is_tensor(a) and a.dtype in (torch.bfloat16, torch.float16)]
            if not low:
                return fn(*args, **kwargs)
            f32 = {id(a): a.float() for a in low}
            out = fn(*[f32.get(id(a), a) if torch.is_tensor(a) else a for a in args],
                     **{k: f32.get(id(v), v) if torch.is_tensor(v) else v
                        for k, v in kwargs.items()})
            for a in low:
                if not a.requires_grad:  # an output argument (inputs that need grad stay)
                    a.copy_(f32[id(a)])
            return out
        return call

    for name in dir(ext):
        fn = getattr(ext, name)
        if callable(fn) and not name.startswith('_'):
            setattr(ext, name, wrap(fn))


def _optim_wrapper(model, precision):
    from mmengine.optim import OptimWrapper

    class AutocastOptimWrapper(OptimWrapper):
        """The forward under autocast, backward and step outside (our wrapper's behaviour)."""

        @contextlib.contextmanager
        def optim_context(self, model):
            with super().optim_context(model), _autocast(precision):
                yield

    optim = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    return (OptimWrapper if precision == 'fp32' else AutocastOptimWrapper)(optim)


def _timed(fn, data, warmup, runs):
    times, out = [], None
    for i in range(warmup + runs):
        batch = copy.deepcopy(data)
        t0 = time.perf_counter()
        out = fn(batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='mmdet_ref alias (mask_rcnn, cascade_mask_rcnn, htc_wo_sem, '
                                 'htc) or an mmdet config path')
    p.add_argument('--ref-script', default=DEFAULT_REF_SCRIPT)
    p.add_argument('--save-weights', help='write the seeded model\'s state dict here and exit')
    p.add_argument('--weights', help='load this state dict (from --save-weights) strictly')
    p.add_argument('--task', choices=['inference', 'train'], default='inference')
    p.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32')
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--json', help='write the timings here')
    p.add_argument('--dump-dets', help='inference: save the last run\'s bboxes, scores, labels')
    p.add_argument('--fuse-conv-bn', action='store_true',
                   help='inference: fold the BatchNorms into the convolutions first (mmcv\'s '
                        'fuse_conv_bn, MMDetection\'s --fuse-conv-bn)')
    args = p.parse_args(argv)

    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    import logging

    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    sys.path.insert(0, osp.dirname(osp.abspath(args.ref_script)))
    import mmdet_ref

    if args.precision != 'fp32':
        float32_mmcv_ops()
    size = (args.size, args.size)
    model, _, path = mmdet_ref.build_model(args.model, args.seed, 0.0, None,
                                           randomize_norm_layers=True, size=size)
    if args.save_weights:
        os.makedirs(osp.dirname(osp.abspath(args.save_weights)), exist_ok=True)
        torch.save(model.state_dict(), args.save_weights)
        print(f'saved {len(model.state_dict())} tensors of {path} to {args.save_weights}')
        return 0
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location='cpu', weights_only=True),
                              strict=True)
    result = dict(model=args.model, config=path, task=args.task, precision=args.precision,
                  threads=torch.get_num_threads(), size=list(size), warmup=args.warmup,
                  runs=args.runs, params=sum(p.numel() for p in model.parameters()),
                  torch=torch.__version__)
    if args.task == 'inference':
        model.eval()
        if args.fuse_conv_bn:
            from mmcv.cnn import fuse_conv_bn
            fuse_conv_bn(model)
        result['fused_conv_bn'] = bool(args.fuse_conv_bn)

        def step(d):
            with _autocast(args.precision):
                return model.test_step(d)
        with torch.no_grad():
            times, out = _timed(step, mmdet_ref.infer_data(size, args.seed), args.warmup,
                                args.runs)
        pred = out[0].pred_instances
        result['num_dets'] = len(pred)
        if args.dump_dets:
            torch.save({k: pred[k].detach().float() if k != 'labels' else pred[k]
                        for k in ('bboxes', 'scores', 'labels')}, args.dump_dets)
    else:
        model.train()
        optim = _optim_wrapper(model, args.precision)
        times, log_vars = _timed(lambda d: model.train_step(d, optim),
                                 mmdet_ref.train_data(model, size, args.seed), args.warmup,
                                 args.runs)
        result['loss'] = float(log_vars['loss'])
    result.update(times_s=[round(t, 4) for t in times], median_s=statistics.median(times))
    print(json.dumps(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(results=[result]), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
