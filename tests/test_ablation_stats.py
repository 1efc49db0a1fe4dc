"""The paired bootstrap of COCO AP (cascade_seg/ablation/stats.py) on constructed examples:
unit weights reproduce pycocotools exactly, multiplicities equal a physically replicated
dataset, the bootstrap spread matches the exact bootstrap distribution (all resamples of a
tiny set enumerated), identical variants differ by exactly 0, a clearly better one is
significant, and seeds are resampled when there are several."""
import copy
import itertools

import numpy as np
import pytest
from ablation_toys import evaluate as _evaluate
from ablation_toys import make_toy, replicate_dataset

from cascade_seg.ablation import stats


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_unit_weights_equal_pycocotools_exactly(seed):
    gt, dets = make_toy(num_images=8, num_cats=3, seed=seed)
    ev = _evaluate(gt, dets)
    data = stats.extract_eval(ev)
    pt = stats.point_metrics(data)
    assert pt['mAP'] == ev.stats[0] and pt['mAP_50'] == ev.stats[1] and pt['mAP_75'] == ev.stats[2]
    prec = ev.eval['precision'][:, :, :, 0, -1]
    assert np.array_equal(stats.precision_array(data), prec)
    # the vectorised replicate path agrees with unit weights (up to summation order)
    rep = stats.replicate_metrics(data, np.ones((3, len(data['img_ids'])), np.int64))
    for i, m in enumerate(stats.EVAL_METRICS):
        assert rep[m] == pytest.approx([ev.stats[i]] * 3, abs=1e-12)


def test_unit_weights_equal_pycocotools_segm():
    gt, dets = make_toy(num_images=6, num_cats=2, seed=5, with_masks=True)
    ev = _evaluate(gt, dets, 'segm')
    pt = stats.point_metrics(stats.extract_eval(ev))
    assert [pt[m] for m in stats.EVAL_METRICS] == list(ev.stats[:3])


def test_multiplicities_equal_a_replicated_dataset():
    """An image counted k times contributes its detections and GTs k times."""
    gt, dets = make_toy(num_images=4, num_cats=2, seed=7)
    data = stats.extract_eval(_evaluate(gt, dets, accumulate=False))
    for counts in ([2, 0, 1, 1], [0, 0, 4, 0], [1, 3, 0, 0], [0, 2, 2, 0]):
        rgt, rdets = replicate_dataset(gt, dets, counts)
        ev = _evaluate(rgt, rdets)
        w = np.asarray(counts, np.int64)
        pt = stats.point_metrics(data, w)
        assert [pt[m] for m in stats.EVAL_METRICS] == pytest.approx(list(ev.stats[:3]),
                                                                    abs=1e-12), counts
        rep = stats.replicate_metrics(data, w[None])
        assert rep['mAP'][0] == pytest.approx(ev.stats[0], abs=1e-12)


def test_bootstrap_spread_matches_the_exact_bootstrap_distribution():
    """All 4^4 equally likely draws of a 4-image set give the exact bootstrap distribution
    of AP; the Monte-Carlo bootstrap (B=20000) must reproduce its mean and spread."""
    gt, dets = make_toy(num_images=4, num_cats=2, seed=11, crowd=False)
    data = stats.extract_eval(_evaluate(gt, dets, accumulate=False))
    n = len(data['img_ids'])
    draws = np.array(list(itertools.product(range(n), repeat=n)))
    exact_w = np.stack([np.bincount(d, minlength=n) for d in draws])
    exact = stats.replicate_metrics(data, exact_w)['mAP']
    exact = exact[~np.isnan(exact)]  # draws with no GT at all have no AP
    w = stats.bootstrap_weights(n, 20000, seed=3)
    mc = stats.replicate_metrics(data, w)['mAP']
    mc = mc[~np.isnan(mc)]
    assert exact.std() > 0.02  # the toy really varies under resampling
    assert mc.mean() == pytest.approx(exact.mean(), abs=0.01)
    assert mc.std() == pytest.approx(exact.std(), rel=0.05)
    lo, hi = stats.percentile_interval(mc)
    elo, ehi = np.percentile(exact, [2.5, 97.5])
    assert lo == pytest.approx(elo, abs=0.03) and hi == pytest.approx(ehi, abs=0.03)


def test_bootstrap_weights_are_multinomial_and_reproducible():
    w = stats.bootstrap_weights(7, 500, seed=4)
    assert w.shape == (500, 7) and (w.sum(axis=1) == 7).all()
    assert np.array_equal(w, stats.bootstrap_weights(7, 500, seed=4))
    assert not np.array_equal(w, stats.bootstrap_weights(7, 500, seed=5))
    assert w.mean() == pytest.approx(1.0, abs=0.05)  # each image drawn once on average


def _runs(**variants):
    """{name: [per-seed {'seed', 'bbox'}]} from extracted eval data."""
    return {name: [dict(seed=s, bbox=d) for s, d in enumerate(per_seed)]
            for name, per_seed in variants.items()}


def test_identical_variants_have_exactly_zero_delta():
    gt, dets = make_toy(num_images=12, num_cats=3, seed=2)
    data = stats.extract_eval(_evaluate(gt, dets, accumulate=False))
    res = stats.compare_runs(_runs(base=[data], same=[copy.deepcopy(data)]), baseline='base',
                             num_replicates=300, iou_types=('bbox', ))
    for m in stats.EVAL_METRICS:
        s = res['variants']['same'][f'bbox_{m}']
        assert s['delta'] == 0.0 and s['ci_low'] == 0.0 and s['ci_high'] == 0.0
        assert not s['significant'] and s['covers'] == 'images'
        assert s['se'] > 0  # each row still has its own image-sampling uncertainty
    # with seeds, identical seed lists are resampled jointly: still exactly 0
    res = stats.compare_runs(_runs(base=[data, data], same=[data, data]), baseline='base',
                             num_replicates=200, iou_types=('bbox', ))
    s = res['variants']['same']['bbox_mAP']
    assert (s['ci_low'], s['ci_high'], s['covers']) == (0.0, 0.0, 'images and seeds')


def test_a_clearly_better_variant_is_significant():
    gt, good = make_toy(num_images=40, num_cats=3, seed=4, quality=0.95, crowd=False)
    _, bad = make_toy(num_images=40, num_cats=3, seed=4, quality=0.3, crowd=False)
    d_good = stats.extract_eval(_evaluate(gt, good, accumulate=False))
    d_bad = stats.extract_eval(_evaluate(gt, bad, accumulate=False))
    res = stats.compare_runs(_runs(bad=[d_bad], good=[d_good]), baseline='bad',
                             num_replicates=500, iou_types=('bbox', ))
    s = res['variants']['good']['bbox_mAP']
    assert s['delta'] > 0.1 and s['significant'] and s['ci_low'] > 0
    assert s['ci_low'] < s['delta'] < s['ci_high']
    assert res['settings']['num_images'] == 40 and res['settings']['replicates'] == 500


def test_seed_noise_widens_the_interval():
    """Two seeds of a variant that disagree a lot: the hierarchical interval must be wider
    than the image-only interval of one seed."""
    gt, a = make_toy(num_images=30, num_cats=2, seed=8, quality=0.9, crowd=False)
    _, b = make_toy(num_images=30, num_cats=2, seed=8, quality=0.4, crowd=False)
    da = stats.extract_eval(_evaluate(gt, a, accumulate=False))
    db = stats.extract_eval(_evaluate(gt, b, accumulate=False))
    one = stats.compare_runs(_runs(base=[da], v=[da]), baseline='base', num_replicates=400,
                             iou_types=('bbox', ))['variants']['v']['bbox_mAP']
    two = stats.compare_runs(_runs(base=[da], v=[da, db]), baseline='base', num_replicates=400,
                             iou_types=('bbox', ))['variants']['v']
    s = two['bbox_mAP']
    assert s['n'] == 2 and s['std'] > 0.05 and s['covers'] == 'images and seeds'
    assert (s['ci_high'] - s['ci_low']) > (one['ci_high'] - one['ci_low']) + 0.02
    assert s['mean'] == pytest.approx(np.mean(s['values']))


def test_other_images_cannot_be_paired():
    gt, dets = make_toy(num_images=6, seed=1)
    data = stats.extract_eval(_evaluate(gt, dets, accumulate=False))
    gt2 = dict(gt, images=gt['images'][:4])
    data2 = stats.extract_eval(_evaluate(gt2, [d for d in dets if d['image_id'] in
                                               {i['id'] for i in gt2['images']}],
                                         accumulate=False))
    res = stats.compare_runs(_runs(base=[data], other=[data2]), baseline='base',
                             num_replicates=50, iou_types=('bbox', ))
    assert 'other' not in res['variants'] and 'other images' in res['notes']['other']


def test_save_and_load_roundtrip(tmp_path):
    gt, dets = make_toy(num_images=5, seed=9)
    ev = _evaluate(gt, dets)
    data = stats.extract_eval(ev)
    path = stats.save_eval(str(tmp_path / 'eval_bbox.npz'), data, iou_type='bbox')
    loaded = stats.load_eval(path)
    assert loaded['meta'] == dict(iou_type='bbox')
    assert stats.point_metrics(loaded)['mAP'] == ev.stats[0]


def test_no_detections_and_empty_images():
    gt, _ = make_toy(num_images=3, seed=6)
    ev = _evaluate(gt, [])
    data = stats.extract_eval(ev)
    assert stats.point_metrics(data)['mAP'] == ev.stats[0] == 0.0
    rep = stats.replicate_metrics(data, stats.bootstrap_weights(3, 20))
    assert np.nanmax(rep['mAP']) == 0.0


def test_equal_quality_is_not_significant():
    """Two detectors of the same quality that differ only in their random errors: the
    paired interval covers 0."""
    gt, a = make_toy(num_images=30, num_cats=3, seed=13, quality=0.7, det_seed=1, crowd=False)
    _, b = make_toy(num_images=30, num_cats=3, seed=13, quality=0.7, det_seed=2, crowd=False)
    da = stats.extract_eval(_evaluate(gt, a, accumulate=False))
    db = stats.extract_eval(_evaluate(gt, b, accumulate=False))
    res = stats.compare_runs(_runs(a=[da], b=[db]), baseline='a', num_replicates=500,
                             iou_types=('bbox', ))
    for m in stats.EVAL_METRICS:
        s = res['variants']['b'][f'bbox_{m}']
        assert s['delta'] != 0 and not s['significant'], (m, s)
        assert s['ci_low'] < 0 < s['ci_high']
