#!/usr/bin/env python
"""Side-by-side CPU speed and memory of our R50-FPN models and MMDetection 3.3's, on the same
weights, in fp32 and under the same bf16 autocast:

    python tools/compare_mmdet_speed.py [--models mask_rcnn htc ...] [--precisions fp32 bf16]
        [--tasks inference train] [--runs 5] [--rounds 1] [--threads 2] [--size 512]
    python tools/compare_mmdet_speed.py --quick --models mask_rcnn     # smoke test, ~2 min

Like for like:
- **Same weights.** MMDetection's seeded model (random weights, ``--randomize-norm``
  BatchNorms, as the parity tests use: decisive scores) is saved once by tools/mmdet_bench.py
  under the reference interpreter, converted with our converter (``convert_mmdet``, checked to
  fit our model key for key) and loaded by our side; MMDetection's side loads the very same
  file. Our side runs the ``*_mmdet.py`` configs (MMDetection's inference conventions), so in
  fp32 both sides pool the same RoIs and return the same detections (the table says how many
  of MMDetection's detections ours match: same label, box IoU >= 0.9).
- **Same work.** A seeded random uint8 image, score threshold 0 (100 detections: the mask path
  runs on 100 boxes), ``test_step`` for inference, ``train_step`` (data preprocessor + loss +
  backward + SGD at lr 0) with the same 3 GT instances for training, the same warmup, runs and
  threads; the median time.
- **Same precision.** fp32, and bf16: ``torch.autocast('cpu', dtype=torch.bfloat16)`` around
  the forward on both sides (ours: ``--precision bf16``, its float32 islands included;
  MMDetection: plain autocast, mmcv's float32-only ops given float32 arguments, see
  tools/mmdet_bench.py).
- **Same inference transform.** At inference both sides fold the BatchNorms into the
  convolutions first (ours: ``fuse_for_inference``, as tools/test.py, tools/benchmark.py and
  the demo do; MMDetection: mmcv's ``fuse_conv_bn``, its ``--fuse-conv-bn`` option);
  ``--no-fuse`` keeps them on both sides.
- **Memory.** Every (side, model, task, precision) runs in a fresh subprocess; its peak RSS is
  that process's ``ru_maxrss`` (``wait4``), measured the same way for both sides. The sides
  alternate which goes first, so drifting machine load hits both alike.

Prints the CPU model and the threads, one table per precision (ours vs MMDetection) and one of
bf16 against fp32 on each side (speed-up, and the fraction of the fp32 detections that bf16
keeps: same label, IoU >= 0.9). Needs the reference interpreter (``--ref-python``,
``$MMDET_REF_PY``, default ``~/.cache/cascade_seg/mmdet-ref-venv/bin/python``; set it up with
``bash ../shared/mmdet_ref/setup.sh``).
"""
import argparse
import json
import os
import os.path as osp
import shutil
import statistics
import sys
import tempfile

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from cascade_seg.engine.benchmark import paired_ratio, pool_rounds, run_measured  # noqa: E402

OURS = dict(
    mask_rcnn=('Mask R-CNN', 'configs/mask_rcnn/mask-rcnn_r50_fpn_mmdet.py'),
    cascade_mask_rcnn=('Cascade Mask R-CNN',
                       'configs/cascade_mask_rcnn/cascade-mask-rcnn_r50_fpn_mmdet.py'),
    htc_wo_sem=('HTC without semantic', 'configs/htc/htc-without-semantic_r50_fpn_mmdet.py'),
    htc=('HTC', 'configs/htc/htc_r50_fpn_mmdet.py'),
)
DEFAULT_REF_PY = osp.expanduser('~/.cache/cascade_seg/mmdet-ref-venv/bin/python')
DEFAULT_REF_SCRIPT = osp.join(osp.dirname(ROOT), 'shared', 'mmdet_ref', 'mmdet_ref.py')
SIDES = ('ours', 'mmdet')


def prepare_weights(model, args, tmp):
    """MMDetection's seeded model saved by the reference side, and our conversion of it.
    Returns (mmdet weights file, our checkpoint file)."""
    import torch

    from cascade_seg.engine.benchmark import build_benchmark_model
    from cascade_seg.utils import align_to_model, convert_mmdet
    mmdet_path = osp.join(tmp, f'mmdet_{model}.pth')
    ours_path = osp.join(tmp, f'ours_{model}.pth')
    if not osp.isfile(mmdet_path):
        cmd = [args.ref_python, osp.join(ROOT, 'tools', 'mmdet_bench.py'), model,
               '--ref-script', args.ref_script, '--save-weights', mmdet_path,
               '--size', str(args.size), '--threads', str(args.threads)]
        rc, *_ = run_measured(cmd, osp.join(tmp, f'save_{model}.log'), cwd=ROOT)
        if rc != 0:
            with open(osp.join(tmp, f'save_{model}.log')) as f:
                raise RuntimeError(f'saving MMDetection\'s {model} failed:\n{f.read()[-3000:]}')
    sd, unmapped = convert_mmdet(torch.load(mmdet_path, map_location='cpu', weights_only=True))
    ours, _ = build_benchmark_model(osp.join(ROOT, OURS[model][1]))
    sd, report = align_to_model(sd, ours.state_dict(), unmapped)
    if not report.ok:
        raise RuntimeError(f'the converted {model} weights do not fit our model:\n{report}')
    torch.save(dict(state_dict=sd, meta=dict(source=f'MMDetection 3.3 {model}, seeded')),
               ours_path)
    return mmdet_path, ours_path


def side_cmd(side, model, task, precision, args, weights, out, dets):
    common = ['--threads', str(args.threads), '--warmup', str(args.warmup), '--runs',
              str(args.runs), '--precision', precision, '--json', out]
    if side == 'ours':
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'benchmark.py'), OURS[model][1],
               '--checkpoint', weights, '--task', task, '--img-size', str(args.size),
               '--no-flops'] + common + (['--no-fuse'] if args.no_fuse else [])
    else:
        cmd = [args.ref_python, osp.join(ROOT, 'tools', 'mmdet_bench.py'), model,
               '--ref-script', args.ref_script, '--weights', weights, '--task', task,
               '--size', str(args.size)] + common + ([] if args.no_fuse else ['--fuse-conv-bn'])
    return cmd + (['--dump-dets', dets] if task == 'inference' else [])


def measure_cell(model, task, precision, args, tmp, weights, first):
    cell = {}
    for side in (SIDES if first == 'ours' else SIDES[::-1]):
        stem = osp.join(tmp, f'{side}_{model}_{task}_{precision}')
        cmd = side_cmd(side, model, task, precision, args, weights[side], stem + '.json',
                       stem + '_dets.pt')
        load0 = os.getloadavg()[0]
        rc, rss, wall, anon = run_measured(cmd, stem + '.log', cwd=ROOT)
        if rc != 0:
            with open(stem + '.log') as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f'{side} {model} {task} {precision} failed (rc {rc}):\n{tail}')
        with open(stem + '.json') as f:
            res = json.load(f)['results'][0]
        cell[side] = dict(times=res['times_s'], params=res['params'], ndet=res.get('num_dets'),
                          rss_mb=rss, anon_mb=anon, wall_s=wall,
                          load=(load0, os.getloadavg()[0]),
                          ran=res.get('precision', precision),
                          dets=stem + '_dets.pt' if task == 'inference' else None)
        print(f'  {side:5s} {model} {task} {precision}: median '
              f'{statistics.median(res["times_s"]):.3f}s runs={res["times_s"]} '
              f'dets={cell[side]["ndet"]} peak RSS {rss:.0f} MiB (anonymous {_mb(anon)}) '
              f'load {load0:.1f}->{os.getloadavg()[0]:.1f}', flush=True)
    return cell


def det_match(ref_file, other_file):
    import torch

    from cascade_seg.engine.benchmark import match_detections
    if not (ref_file and other_file and osp.isfile(ref_file) and osp.isfile(other_file)):
        return None
    return match_detections(torch.load(ref_file, weights_only=True),
                            torch.load(other_file, weights_only=True))


def _mb(x):
    return '-' if x is None else f'{x:.0f}'


def _pct(x):
    return '-' if x is None else f'{100 * x:.0f}%'


def precision_table(results, precision):
    lines = [f'**{precision}** (ours / MMDetection; ratio < 1: ours faster or smaller)', '',
             '| model | params ours / mmdet | infer s ours | mmdet | ratio | dets ours / mmdet '
             '(matched) | train s ours | mmdet | ratio | peak RSS train ours / mmdet (MiB) '
             '| peak RSS infer ours / mmdet (MiB) |',
             '|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|']
    notes = ['', 'Peak RSS: the subprocess\'s ru_maxrss, in brackets its anonymous part '
                 '(RssAnon, sampled every 5 ms; the rest are shared-library pages, whose '
                 'residency differs between the two virtualenvs by ~100-200 MiB).']
    for model, r in results.items():
        inf, tr = r.get(('inference', precision)), r.get(('train', precision))
        any_cell = inf or tr
        if any_cell is None:
            continue
        row = [OURS[model][0], f'{any_cell["ours"]["params"] / 1e6:.1f} M / '
                               f'{any_cell["mmdet"]["params"] / 1e6:.1f} M']
        for cell in (inf, tr):
            if cell is None:
                row += ['-'] * (4 if cell is inf else 3)
                continue
            o, m = (statistics.median(cell[s]['times']) for s in SIDES)
            row += [f'{o:.3f}', f'{m:.3f}', f'**{paired_ratio(cell["ours"], cell["mmdet"]):.2f}**']
            if cell is inf:
                row.append(f'{cell["ours"]["ndet"]} / {cell["mmdet"]["ndet"]} '
                           f'({_pct(det_match(cell["mmdet"]["dets"], cell["ours"]["dets"]))})')
        for cell in (tr, inf):
            row.append('-' if cell is None else
                       f'{cell["ours"]["rss_mb"]:.0f} / {cell["mmdet"]["rss_mb"]:.0f} '
                       f'({_mb(cell["ours"]["anon_mb"])} / {_mb(cell["mmdet"]["anon_mb"])})')
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines + notes)


def bf16_table(results, low='bf16'):
    lines = [f'**{low} against fp32** (speed-up = fp32 time / {low} time; kept = fp32 '
             f'detections that {low} keeps: same label, IoU >= 0.9)', '',
             '| model | infer speed-up ours | mmdet | train speed-up ours | mmdet '
             '| kept ours | kept mmdet | ours bf16 / mmdet bf16 infer | train |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for model, r in results.items():
        row = [OURS[model][0]]
        for task in ('inference', 'train'):
            hi, lo = r.get((task, 'fp32')), r.get((task, low))
            for side in SIDES:
                row.append('-' if hi is None or lo is None else
                           f'{paired_ratio(hi[side], lo[side]):.2f}x')
        hi, lo = r.get(('inference', 'fp32')), r.get(('inference', low))
        for side in SIDES:
            row.append('-' if hi is None or lo is None else
                       _pct(det_match(hi[side]['dets'], lo[side]['dets'])))
        for task in ('inference', 'train'):
            lo = r.get((task, low))
            row.append('-' if lo is None else f'{paired_ratio(lo["ours"], lo["mmdet"]):.2f}')
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', 'Random weights with randomised BatchNorms are chaotic: float32 and float64 '
              'features already part by ~1e-4 at C5, bfloat16 ones by tens of percent, on both '
              'sides alike, so "kept" describes these weights, not the implementation (on a '
              'trained model see docs/speed.md).']
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(OURS), choices=list(OURS))
    p.add_argument('--tasks', nargs='+', default=['inference', 'train'],
                   choices=['inference', 'train'])
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'], choices=['fp32', 'bf16'])
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--rounds', type=int, default=1, help='repeat every cell; times are pooled')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--quick', action='store_true',
                   help='smoke test: 128x128, no warmup, 1 run, 1 round')
    p.add_argument('--ref-python', default=os.environ.get('MMDET_REF_PY', DEFAULT_REF_PY))
    p.add_argument('--ref-script', default=DEFAULT_REF_SCRIPT)
    p.add_argument('--work-dir', default=None,
                   help='keep weights, logs and raw outputs here (default: a temporary folder)')
    p.add_argument('--json', default=None, help='write all raw measurements here')
    p.add_argument('--markdown', default=None, help='write the tables here')
    p.add_argument('--no-fuse', action='store_true',
                   help='inference: keep the BatchNorms on both sides (default: both fold them '
                        'into the convolutions)')
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.warmup, args.runs, args.rounds = 128, 0, 1, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.ref_python):
        raise SystemExit(f'no MMDetection reference interpreter at {args.ref_python} '
                         '(--ref-python, $MMDET_REF_PY; bash ../shared/mmdet_ref/setup.sh '
                         'builds one)')

    from cascade_seg.engine.benchmark import side_by_side_header
    header = side_by_side_header(args.threads, args.size, args.warmup, args.runs, args.rounds,
                                 ' (ratios: median of the per-round ratios)') + \
        ('; inference with the BatchNorms kept on both sides' if args.no_fuse else
         '; inference with the BatchNorms folded into the convolutions on both sides')
    print(header, flush=True)
    tmp = args.work_dir or tempfile.mkdtemp(prefix='compare_mmdet_')
    os.makedirs(tmp, exist_ok=True)
    results, loads, k = {}, [], 0
    try:
        for model in args.models:
            mmdet_w, ours_w = prepare_weights(model, args, tmp)
            weights = dict(ours=ours_w, mmdet=mmdet_w)
            results[model] = {}
            for precision in args.precisions:
                for task in args.tasks:
                    rounds = []
                    for _ in range(args.rounds):
                        rounds.append(measure_cell(model, task, precision, args, tmp, weights,
                                                   'ours' if k % 2 == 0 else 'mmdet'))
                        k += 1
                        loads += [x for s in SIDES for x in rounds[-1][s]['load']]
                    results[model][(task, precision)] = {s: pool_rounds([r[s] for r in rounds])
                                                        for s in SIDES}
        text = [header, f'load average (1 min) during the runs: {min(loads):.1f}-'
                        f'{max(loads):.1f}', '']
        for precision in args.precisions:
            text += [precision_table(results, precision), '']
        if 'fp32' in args.precisions and 'bf16' in args.precisions:
            text += [bf16_table(results), '']
        text = '\n'.join(text)
        print('\n' + text)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(text + '\n')
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(args=vars(args), header=header, loads=loads, results={
                    m: {f'{t}/{pr}': c for (t, pr), c in r.items()}
                    for m, r in results.items()}), f, indent=1)
    finally:
        if args.work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == '__main__':
    main()
