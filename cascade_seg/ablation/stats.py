"""Uncertainty of COCO AP and of AP differences: a paired bootstrap over validation images.

COCO AP is not a mean over images, so its sampling error has no closed form; the
bootstrap estimates it by recomputing AP on resampled validation sets. This module keeps
what one run's ``COCOeval.evaluate()`` decided for every (image, category) -- which
detections match a GT at each IoU threshold, which are ignored, how many GT count -- and
recomputes ``COCOeval.accumulate()``'s precision/recall with *image multiplicities*: an
image drawn k times contributes its detections and its GTs k times. The matching itself
never changes under resampling (it is per image), so one ``evaluate()`` per run suffices
and the replicates are a vectorised numpy computation.

Definitions (all those of pycocotools; see docs/ablations.md for the protocol):

* per category: detections of all images in image order, sorted by score (stable
  mergesort), truncated to ``maxDets=100`` per image, area range ``'all'``; cumulative
  TP/FP counts (weighted by the multiplicities), recall = TP / #non-ignored GT, precision
  made monotone from the right, read at COCO's 101 recall points;
* AP = mean over IoU thresholds, recall points and the categories that have at least one
  non-ignored GT in the (resampled) set; AP50 / AP75 use one IoU threshold.

With all multiplicities 1 :func:`point_metrics` equals pycocotools' ``stats[0..2]`` bit
for bit (tests/test_ablation_stats.py checks it).
"""
import json

import numpy as np

__all__ = ['EVAL_METRICS', 'extract_eval', 'save_eval', 'load_eval', 'point_metrics',
           'precision_array', 'bootstrap_weights', 'replicate_metrics', 'percentile_interval',
           'compare_runs']

# The metrics the bootstrap covers, as CocoMetric names them (``{iou_type}_{name}``).
EVAL_METRICS = ('mAP', 'mAP_50', 'mAP_75')
_EPS = np.spacing(1)
_CHUNK_ELEMENTS = 1_000_000  # (replicates x IoU thresholds x detections) per numpy step


# ----------------------------------------------------------------------------------------
# per-image evaluation data: extraction and storage
# ----------------------------------------------------------------------------------------
def extract_eval(coco_eval, max_det=100):
    """Compact per-image matching of a ``COCOeval`` on which ``evaluate()`` has run.

    Returns a dict of numpy arrays: ``img_ids (I)``, ``cat_ids (K)``, ``iou_thrs (T)``,
    ``rec_thrs (R)``, per detection ``det_img, det_cat`` (indices), ``det_score``,
    ``det_tp, det_fp (T, D)`` (matched / unmatched and not ignored), and
    ``gt_count (I, K)``: non-ignored GT per image and category. Detections are stored
    category by category, in image order, each image's in COCOeval's order (score
    descending, at most ``max_det``): exactly the order ``accumulate()`` concatenates.
    """
    p = coco_eval.params
    if not p.useCats:
        raise ValueError('per-image AP data needs COCOeval.params.useCats = 1')
    if not coco_eval.evalImgs:
        raise ValueError('COCOeval.evaluate() has not run')
    if max_det not in p.maxDets:
        max_det = p.maxDets[-1]
    img_ids, cat_ids = list(p.imgIds), list(p.catIds)
    num_img, num_area = len(img_ids), len(p.areaRng)
    area = list(p.areaRngLbl).index('all')
    num_iou = len(p.iouThrs)
    det_img, det_cat, det_score, det_tp, det_fp = [], [], [], [], []
    gt_count = np.zeros((num_img, len(cat_ids)), np.int64)
    for k in range(len(cat_ids)):
        base = k * num_area * num_img + area * num_img
        for i in range(num_img):
            e = coco_eval.evalImgs[base + i]
            if e is None:
                continue
            gt_count[i, k] = int(np.count_nonzero(np.asarray(e['gtIgnore']) == 0))
            scores = np.asarray(e['dtScores'][:max_det], np.float64)
            if not len(scores):
                continue
            matched = np.asarray(e['dtMatches'])[:, :max_det].astype(bool)
            ignored = np.asarray(e['dtIgnore'])[:, :max_det].astype(bool)
            det_img.append(np.full(len(scores), i, np.int32))
            det_cat.append(np.full(len(scores), k, np.int32))
            det_score.append(scores)
            det_tp.append(matched & ~ignored)
            det_fp.append(~matched & ~ignored)
    cat = (lambda xs, dt, shape: np.concatenate(xs, axis=-1) if xs else np.zeros(shape, dt))
    return dict(img_ids=np.asarray(img_ids, np.int64), cat_ids=np.asarray(cat_ids, np.int64),
                iou_thrs=np.asarray(p.iouThrs, np.float64),
                rec_thrs=np.asarray(p.recThrs, np.float64),
                max_det=np.int64(max_det),
                det_img=cat(det_img, np.int32, (0, )), det_cat=cat(det_cat, np.int32, (0, )),
                det_score=cat(det_score, np.float64, (0, )),
                det_tp=cat(det_tp, bool, (num_iou, 0)), det_fp=cat(det_fp, bool, (num_iou, 0)),
                gt_count=gt_count)


def save_eval(path, data, **meta):
    """Write :func:`extract_eval`'s arrays (and JSON-able ``meta``) to a compressed .npz."""
    np.savez_compressed(path, meta=np.asarray(json.dumps(meta)), **data)
    return path


def load_eval(path):
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data['meta'] = json.loads(str(data.pop('meta', '{}')))
    return data


# ----------------------------------------------------------------------------------------
# weighted accumulate
# ----------------------------------------------------------------------------------------
def _category_curves(data):
    """Per category: its detections in accumulate()'s order (score descending, stable,
    image order for ties), cut after the last TP, with per IoU threshold the positions of
    the true positives and of the ignored detections.

    Detections after the last true positive (at every IoU threshold) only add points of
    lower precision at the final recall; the interpolated precision never reads them,
    whatever the multiplicities, so they are dropped to save work.
    """
    curves = []
    for k in range(len(data['cat_ids'])):
        sel = np.flatnonzero(data['det_cat'] == k)
        order = sel[np.argsort(-data['det_score'][sel], kind='mergesort')]
        tp, fp = data['det_tp'][:, order], data['det_fp'][:, order]
        hits = np.flatnonzero(tp.any(axis=0))
        n = int(hits[-1]) + 1 if len(hits) else 0
        tp, ignored = tp[:, :n], ~(tp[:, :n] | fp[:, :n])
        curves.append(dict(img=data['det_img'][order[:n]],
                           tp_pos=[np.flatnonzero(row) for row in tp],
                           ignored_pos=[np.flatnonzero(row) for row in ignored]))
    return curves


def _interpolated_precision(curve, npig, weights, rec_thrs):
    """COCO's interpolated precision ``q`` (B, T, R) of one category for B weight vectors.

    ``weights (B, I)`` are image multiplicities, ``npig (B,)`` the weighted number of
    non-ignored GT (> 0). COCO reads the precision envelope (the running maximum from the
    right) at the first point whose recall reaches each recall threshold. Recall only
    grows at true positives, and between two true positives precision only falls, so that
    value is the maximum precision over the *true-positive* points whose recall reaches the
    threshold: only those points are computed. Counts are exact integers and precision and
    recall the same floating-point expressions as COCOeval.accumulate()'s.
    """
    num_b, num_t, num_r = len(weights), len(curve['tp_pos']), len(rec_thrs)
    q = np.zeros((num_b, num_t, num_r))
    if not len(curve['img']):
        return q
    w = weights[:, curve['img']]  # (B, D) multiplicity of each detection's image
    seen = np.cumsum(w, axis=1)  # weight of the detections up to and including each one
    npig = npig[:, None].astype(float)
    for t, (pos, ign) in enumerate(zip(curve['tp_pos'], curve['ignored_pos'])):
        num_tp = len(pos)
        if not num_tp:
            continue
        tp_cum = np.cumsum(w[:, pos], axis=1)  # (B, m) at each true positive
        fp_cum = seen[:, pos] - tp_cum
        if len(ign):  # ignored detections count neither as TP nor as FP
            ign_cum = np.cumsum(w[:, ign], axis=1)
            before = np.searchsorted(ign, pos)
            fp_cum -= np.where(before > 0, ign_cum[:, np.maximum(before - 1, 0)], 0)
        tp_f, fp_f = tp_cum.astype(float), fp_cum.astype(float)
        rc = tp_f / npig
        pr = tp_f / (fp_f + tp_f + _EPS)
        env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        # first true positive with rc >= rec_thrs[r]: rc is non-decreasing, so its index is
        # the number of points with fewer than r + 1 thresholds at or below their recall
        level = np.searchsorted(rec_thrs, rc.ravel(), side='right').reshape(num_b, num_tp)
        counts = np.bincount((level + (num_r + 1) * np.arange(num_b)[:, None]).ravel(),
                             minlength=num_b * (num_r + 1)).reshape(num_b, num_r + 1)
        first = np.cumsum(counts, axis=1)[:, :num_r]
        qt = np.take_along_axis(env, np.minimum(first, num_tp - 1), axis=1)
        qt[first >= num_tp] = 0.0  # recall level never reached
        q[:, t] = qt
    return q


def _weighted_precision(data, weights, curves=None):
    """Yield ``(k, rows, valid (b,), q (b, T, R))`` per category and chunk of replicates."""
    curves = curves if curves is not None else _category_curves(data)
    weights = np.asarray(weights, np.int64)
    num_t, num_r = len(data['iou_thrs']), len(data['rec_thrs'])
    for k, curve in enumerate(curves):
        npig = weights @ data['gt_count'][:, k]
        valid = npig > 0
        step = max(1, _CHUNK_ELEMENTS // max(1, 2 * len(curve['img'])))
        for start in range(0, len(weights), step):
            sl = slice(start, start + step)
            ok = valid[sl]
            if not ok.any():
                continue
            q = np.zeros((len(ok), num_t, num_r))
            q[ok] = _interpolated_precision(curve, npig[sl][ok], weights[sl][ok],
                                            data['rec_thrs'])
            yield k, sl, ok, q


def precision_array(data, weights=None):
    """COCOeval.eval['precision'][:, :, :, area 'all', maxDets 100] for one weight vector:
    (T, R, K), -1 for categories without non-ignored GT."""
    num_img = len(data['img_ids'])
    w = np.ones((1, num_img), np.int64) if weights is None else np.asarray(weights)[None]
    prec = -np.ones((len(data['iou_thrs']), len(data['rec_thrs']), len(data['cat_ids'])))
    for k, _, ok, q in _weighted_precision(data, w):
        if ok[0]:
            prec[:, :, k] = q[0]
    return prec


def _iou_index(data, thr):
    idx = np.where(thr == data['iou_thrs'])[0]  # the comparison COCOeval.summarize() makes
    return int(idx[0]) if len(idx) else None


def _mean_valid(s):
    return float(np.mean(s[s > -1])) if np.any(s > -1) else -1.0


def point_metrics(data, weights=None):
    """``{'mAP', 'mAP_50', 'mAP_75'}`` as COCOeval.summarize() computes them (stats[0..2])."""
    prec = precision_array(data, weights)
    out = dict(mAP=_mean_valid(prec))
    for name, thr in (('mAP_50', .5), ('mAP_75', .75)):
        t = _iou_index(data, thr)
        out[name] = _mean_valid(prec[t]) if t is not None else float('nan')
    return out


def bootstrap_weights(num_images, num_replicates=1000, seed=0):
    """(B, I) multiplicities: each row draws I images with replacement (fixed RNG seed)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(num_replicates, num_images))
    flat = (draws + num_images * np.arange(num_replicates)[:, None]).ravel()
    return np.bincount(flat, minlength=num_replicates * num_images).reshape(
        num_replicates, num_images)


def replicate_metrics(data, weights):
    """AP of every weight vector: ``{'mAP': (B,), 'mAP_50': (B,), 'mAP_75': (B,),
    'per_iou': (B, T)}``; NaN where a replicate has no category with GT."""
    weights = np.asarray(weights, np.int64)
    num_b, num_t = len(weights), len(data['iou_thrs'])
    total = np.zeros((num_b, num_t))
    num_valid = np.zeros(num_b)
    for k in range(len(data['cat_ids'])):
        num_valid += (weights @ data['gt_count'][:, k]) > 0
    for _, sl, ok, q in _weighted_precision(data, weights):
        total[sl] += np.where(ok[:, None], q.mean(axis=2), 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        per_iou = total / num_valid[:, None]
    out = dict(mAP=per_iou.mean(axis=1), per_iou=per_iou)
    for name, thr in (('mAP_50', .5), ('mAP_75', .75)):
        t = _iou_index(data, thr)
        out[name] = per_iou[:, t] if t is not None else np.full(num_b, np.nan)
    return out


def percentile_interval(samples, level=0.95):
    lo, hi = np.nanpercentile(np.asarray(samples, np.float64),
                              [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def align_weights(weights, ref_img_ids, img_ids):
    """Columns of ``weights`` (indexed like ``ref_img_ids``) reordered for ``img_ids``;
    None when the two runs were not evaluated on the same images."""
    ref_img_ids, img_ids = np.asarray(ref_img_ids), np.asarray(img_ids)
    if len(ref_img_ids) != len(img_ids) or set(ref_img_ids.tolist()) != set(img_ids.tolist()):
        return None
    pos = {int(v): i for i, v in enumerate(ref_img_ids)}
    return weights[:, [pos[int(v)] for v in img_ids]]


# ----------------------------------------------------------------------------------------
# comparing variants
# ----------------------------------------------------------------------------------------
def compare_runs(runs, baseline=None, num_replicates=1000, seed=0, level=0.95,
                 iou_types=('bbox', 'segm'), loader=load_eval):
    """Bootstrap statistics for every variant and its difference to the baseline.

    ``runs``: ``{variant: [eval source per seed, ...]}`` where a source is, per IoU type,
    a path to :func:`save_eval`'s file (or the loaded dict): ``{'bbox': ..., 'segm': ...}``.

    Image resampling is paired: one set of B multiplicity vectors over the validation
    images (RNG ``seed``) is used for every variant and seed. Per metric and variant:

    * ``mean``: mean over seeds of the full-set AP; ``std``: sample std over seeds (None
      with one seed); ``n``: number of seeds;
    * ``se``: bootstrap standard error over validation images of the seed-averaged AP;
    * ``delta, ci_low, ci_high, significant`` (not for the baseline): the difference of
      the seed means and a percentile interval of its replicates. With one seed on each
      side the replicate is the paired image bootstrap ``AP_v(w_b) - AP_base(w_b)``; with
      more, seeds are resampled too (hierarchical bootstrap: seeds with replacement, then
      the same image resample ``w_b`` for every drawn seed), jointly for both sides when
      they ran the same seed list (seed-paired), independently otherwise.

    Returns ``dict(settings=..., variants={name: {metric: {...}}}, per_iou={name: ...})``;
    a variant without usable data (missing files, other images) gets a ``note`` instead.
    """
    names = list(runs)
    settings = dict(method='paired bootstrap over validation images', replicates=num_replicates,
                    seed=seed, level=level, baseline=baseline, interval='percentile')
    loaded, notes = {}, {}
    for name in names:
        per_seed = []
        for src in runs[name]:
            try:
                per_seed.append({t: loader(src[t]) if isinstance(src[t], str) else src[t]
                                 for t in iou_types if src and src.get(t) is not None})
            except (OSError, ValueError, KeyError) as e:
                notes[name] = f'per-image eval data unreadable: {e}'
                per_seed = []
                break
        per_seed = [s for s in per_seed if s]
        if per_seed:
            loaded[name] = per_seed
        elif name not in notes:
            notes[name] = 'no per-image eval data'
    result = dict(settings=settings, variants={}, per_iou={}, notes=notes)
    if not loaded:
        return result
    ref_name = baseline if baseline in loaded else next(iter(loaded))
    ref = next(iter(loaded[ref_name][0].values()))
    ref_ids = ref['img_ids']
    weights = bootstrap_weights(len(ref_ids), num_replicates, seed)
    settings['num_images'] = int(len(ref_ids))

    reps, points = {}, {}
    for name, per_seed in loaded.items():
        by_metric, by_point = {}, {}
        for run in per_seed:
            for t, data in run.items():
                w = align_weights(weights, ref_ids, data['img_ids'])
                if w is None:
                    break
                rep = replicate_metrics(data, w)
                pt = point_metrics(data)
                for m in EVAL_METRICS:
                    by_metric.setdefault(f'{t}_{m}', []).append(rep[m])
                    by_point.setdefault(f'{t}_{m}', []).append(pt[m])
                by_metric.setdefault(f'{t}_per_iou', []).append(rep['per_iou'])
            else:
                continue
            notes[name] = (f'evaluated on other images than {ref_name} ({len(data["img_ids"])} '
                           f'vs {len(ref_ids)}): no paired interval')
            break
        else:
            reps[name] = {k: np.stack(v) for k, v in by_metric.items()}  # (S, B[, T])
            points[name] = by_point
    seeds_of = {name: len(next(iter(reps[name].values()))) for name in reps}

    for name in reps:
        out = {}
        for metric, values in points[name].items():
            values = np.asarray(values, np.float64)
            seed_avg = reps[name][metric].mean(axis=0)
            out[metric] = dict(
                values=values.tolist(), n=int(len(values)), mean=float(values.mean()),
                std=float(values.std(ddof=1)) if len(values) > 1 else None,
                se=float(np.nanstd(seed_avg, ddof=1)))
        for t in iou_types:
            key = f'{t}_per_iou'
            if key in reps[name]:
                curve = reps[name][key]  # (S, B, T)
                result['per_iou'][name + '|' + t] = dict(
                    se=np.nanstd(curve.mean(axis=0), axis=0, ddof=1).tolist())
        result['variants'][name] = out

    if baseline in reps:
        for name in reps:
            if name == baseline:
                continue
            paired_seeds = (seeds_of[name] == seeds_of[baseline]
                            and _seed_keys(runs[name]) == _seed_keys(runs[baseline]))
            rng = np.random.default_rng([seed, 1])
            idx_v, idx_b = _seed_draws(rng, seeds_of[name], seeds_of[baseline], num_replicates,
                                       paired_seeds)
            for metric, stat in result['variants'][name].items():
                if metric not in result['variants'][baseline]:
                    continue
                diff = (_resampled_mean(reps[name][metric], idx_v)
                        - _resampled_mean(reps[baseline][metric], idx_b))
                lo, hi = percentile_interval(diff, level)
                stat.update(delta=stat['mean'] - result['variants'][baseline][metric]['mean'],
                            ci_low=lo, ci_high=hi, significant=bool(lo > 0 or hi < 0),
                            covers='images' if idx_v is None and idx_b is None
                            else 'images and seeds')
    settings['seeds_resampled'] = any(n > 1 for n in seeds_of.values())
    return result


def _seed_keys(sources):
    return [s.get('seed') if isinstance(s, dict) else None for s in sources]


def _seed_draws(rng, n_v, n_b, num_replicates, paired):
    """Seed indices per replicate for the hierarchical bootstrap (None: no resampling)."""
    if n_v == 1 and n_b == 1:
        return None, None
    if paired:
        idx = rng.integers(0, n_v, size=(num_replicates, n_v))
        return idx, idx
    idx_v = rng.integers(0, n_v, size=(num_replicates, n_v)) if n_v > 1 else None
    idx_b = rng.integers(0, n_b, size=(num_replicates, n_b)) if n_b > 1 else None
    return idx_v, idx_b


def _resampled_mean(rep, idx):
    """rep (S, B): per replicate b, the mean over seeds idx[b] (all seeds when idx is None)."""
    if idx is None:
        return rep.mean(axis=0)
    cols = np.arange(rep.shape[1])[:, None]
    return rep[idx, cols].mean(axis=1)
