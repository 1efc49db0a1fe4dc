"""Ablation spec parsing, override validation, result aggregation and table rendering
(no model involved; the end-to-end run is in test_ablation_e2e.py)."""
import json
import os.path as osp
import re

import pytest
from ablation_toys import evaluate as toy_evaluate
from ablation_toys import make_toy
from mmengine.config import Config

from cascade_seg.ablation import (OverrideError, apply_overrides, attach_statistics, config_hash,
                                  failed_variants, load_spec, plot, render, stats, summarize)

DATA = osp.join(osp.dirname(__file__), 'data')


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


@pytest.fixture
def base_cfg(tmp_path):
    return _write(tmp_path / 'base.py',
                  "model = dict(type='M', roi_head=dict(num_stages=3, mask_stages='all', "
                  "heads=[dict(a=1), dict(a=2)]))\ntrain_cfg = dict(max_epochs=12)\n")


def test_load_spec_resolves_variants(tmp_path, base_cfg):
    other = _write(tmp_path / 'other.py', "model = dict(type='N')\n")
    spec = _write(tmp_path / 'spec.py', f"""
base = {base_cfg!r}
variants = [dict(name='first', overrides={{'model.roi_head.mask_stages': 'first'}}),
            dict(name='other', config={other!r})]
seeds = [0, 1]
run = dict(speed='inference')
protocol = 'Short schedule,\\n   one line.'
""")
    s = load_spec(spec)
    assert s.protocol == 'Short schedule, one line.'  # whitespace folded to one line
    assert [v.name for v in s.variants] == ['first', 'other']
    assert s.variants[0].config == base_cfg and s.variants[1].config == other
    assert s.seeds == [0, 1]
    assert s.run['speed'] == ('inference', ) and s.run['train'] is True


def test_duplicate_and_missing_variants_are_errors(tmp_path, base_cfg):
    dup = _write(tmp_path / 'dup.py', f"base = {base_cfg!r}\nvariants = [dict(name='a'), dict(name='a')]\n")
    with pytest.raises(ValueError, match="'a' is used twice"):
        load_spec(dup)
    empty = _write(tmp_path / 'empty.py', f"base = {base_cfg!r}\nvariants = []\n")
    with pytest.raises(ValueError, match='no variants'):
        load_spec(empty)


def test_overrides_set_existing_keys_and_list_items(base_cfg):
    cfg = Config.fromfile(base_cfg)
    apply_overrides(cfg, {'model.roi_head.mask_stages': 'last', 'model.roi_head.heads.1.a': 7,
                          'train_cfg.max_epochs': 2}, 'v')
    assert cfg.model.roi_head.mask_stages == 'last'
    assert cfg.model.roi_head.heads[1]['a'] == 7
    assert cfg.train_cfg.max_epochs == 2


def test_bad_override_key_names_variant_and_key(base_cfg):
    cfg = Config.fromfile(base_cfg)
    with pytest.raises(OverrideError) as e:
        apply_overrides(cfg, {'model.roi_head.mask_stagez': 'last'}, 'typo_variant')
    assert 'typo_variant' in str(e.value) and 'model.roi_head.mask_stagez' in str(e.value)
    with pytest.raises(OverrideError, match="no 'model.roi_hed'"):
        apply_overrides(cfg, {'model.roi_hed.num_stages': 2}, 'v')
    # '+' adds a field deliberately
    apply_overrides(cfg, {'+model.roi_head.new_field': 1}, 'v')
    assert cfg.model.roi_head.new_field == 1


def test_config_hash_tracks_config_and_seed(base_cfg):
    a, b = Config.fromfile(base_cfg), Config.fromfile(base_cfg)
    assert config_hash(a, 0) == config_hash(b, 0)
    b.work_dir = '/elsewhere'  # where results go is not part of the experiment
    assert config_hash(a, 0) == config_hash(b, 0)
    assert config_hash(a, 0) != config_hash(a, 1)
    apply_overrides(b, {'train_cfg.max_epochs': 3}, 'v')
    assert config_hash(a, 0) != config_hash(b, 0)


def _fake_results(tmp_path, base_cfg, with_eval=False, seeds=(0, 1)):
    """Per-seed result records as tools/ablate.py writes them, then summarized.

    ``with_eval``: each run also stores per-image evaluation data of a toy COCO set (the
    same GT for every run; 'cascade' detects much better than 'mask_rcnn'), and its
    metrics are the AP of those data."""
    spec = _write(tmp_path / 'spec.py', f"""
base = {base_cfg!r}
variants = [dict(name='mask_rcnn'), dict(name='cascade'), dict(name='broken')]
seeds = {list(seeds)!r}
report = dict(baseline='mask_rcnn', columns=['bbox_mAP', 'segm_mAP', 'inference.s_per_img'])
protocol = 'Toy protocol: 2 epochs from scratch'
""")
    s = load_spec(spec)
    work = tmp_path / 'work'
    values = {'mask_rcnn': [(0.30, 0.25), (0.32, 0.27)], 'cascade': [(0.35, 0.26), (0.37, 0.28)]}
    for name, per_seed in values.items():
        for seed in seeds:
            box, segm = per_seed[seed % 2]
            d = work / name / f'seed{seed}'
            d.mkdir(parents=True)
            rec = dict(name=name, seed=seed, status='done', hash='h',
                       schedule='2 epochs, batch 4, AdamW lr 0.001',
                       metrics={'coco/bbox_mAP': box, 'coco/segm_mAP': segm,
                                'coco/segm_precision_per_iou': [segm] * 10},
                       speed={'inference': {'s_per_img': 0.1 if name == 'mask_rcnn' else 0.2}})
            if with_eval:
                quality = 0.45 if name == 'mask_rcnn' else 0.9
                gt, dets = make_toy(num_images=30, num_cats=3, seed=21, quality=quality,
                                    det_seed=seed, with_masks=True)
                rec['eval'] = {}
                for iou_type in ('bbox', 'segm'):
                    data = stats.extract_eval(toy_evaluate(gt, dets, iou_type, accumulate=False))
                    stats.save_eval(str(d / f'eval_{iou_type}.npz'), data)
                    rec['eval'][iou_type] = f'eval_{iou_type}.npz'
                    for m, v in stats.point_metrics(data).items():
                        rec['metrics'][f'coco/{iou_type}_{m}'] = v
            (d / 'result.json').write_text(json.dumps(rec))
    for seed in seeds:
        d = work / 'broken' / f'seed{seed}'
        d.mkdir(parents=True)
        (d / 'result.json').write_text(json.dumps(dict(
            name='broken', seed=seed, status='failed',
            error="Traceback (most recent call last):\n  ...\n"
                  "OverrideError: variant 'broken': override key 'model.x' does not exist")))
    return s, str(work)


def test_summary_mean_std_and_failure(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    res = summarize(s, work)
    rows = {r['name']: r for r in res['variants']}
    assert rows['mask_rcnn']['mean']['bbox_mAP'] == pytest.approx(0.31)
    assert rows['mask_rcnn']['std']['bbox_mAP'] == pytest.approx(0.0141421, rel=1e-4)
    assert rows['cascade']['mean']['inference.s_per_img'] == pytest.approx(0.2)
    # the error's last line, which names the variant and the key
    assert rows['broken']['status'] == 'failed'
    error = rows['broken']['error']
    assert error.startswith('OverrideError:') and 'model.x' in error
    assert res['protocol'] == 'Toy protocol: 2 epochs from scratch'
    assert rows['cascade']['schedule'] == '2 epochs, batch 4, AdamW lr 0.001'
    assert failed_variants(res) == ['broken']


def _fixed_statistics(res):
    """Hand-written bootstrap statistics: the snapshot checks formatting, not numerics."""
    def st(mean, std, se, delta=None, lo=None, hi=None):
        out = dict(mean=mean, std=std, n=2, se=se)
        if delta is not None:
            out.update(delta=delta, ci_low=lo, ci_high=hi, significant=lo > 0 or hi < 0)
        return out
    res['statistics'] = dict(
        settings=dict(baseline='mask_rcnn', replicates=1000, seed=0, level=0.95, num_images=60),
        variants=dict(mask_rcnn=dict(bbox_mAP=st(0.31, 0.014, 0.02),
                                     segm_mAP=st(0.26, 0.014, 0.019)),
                      cascade=dict(bbox_mAP=st(0.36, 0.014, 0.021, 0.05, 0.012, 0.088),
                                   segm_mAP=st(0.27, 0.014, 0.02, 0.01, -0.02, 0.041))),
        per_iou={}, notes={})
    return res


def test_markdown_table_matches_snapshot(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    table = render(_fixed_statistics(summarize(s, work)), 'md')
    with open(osp.join(DATA, 'ablation_table_snapshot.md')) as f:
        assert table == f.read()


def test_table_without_per_image_data_says_so(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    res = attach_statistics(summarize(s, work), root=work)
    table = render(res, 'md')
    assert ('| cascade | 36.0 ± 1.4 | 27.0 ± 1.4 | 0.200 ± 0.000 | +5.0 [no CI] | +1.0 [no CI] |'
            in table)
    assert 'no per-image evaluation data stored: no intervals' in table


def test_bootstrap_intervals_from_stored_eval_data(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg, with_eval=True, seeds=(0, ))
    res = attach_statistics(summarize(s, work), root=work, num_replicates=300)
    st = res['statistics']
    assert st['settings']['num_images'] == 30 and st['settings']['replicates'] == 300
    casc = st['variants']['cascade']['segm_mAP']
    assert casc['significant'] and casc['ci_low'] > 0 and casc['covers'] == 'images'
    assert casc['ci_low'] < casc['delta'] < casc['ci_high']
    rows = {r['name']: r for r in res['variants']}
    assert casc['mean'] == rows['cascade']['mean']['segm_mAP']  # the reported AP, exactly
    table = render(res, 'md')
    line = next(ln for ln in table.splitlines() if ln.startswith('| cascade |'))
    assert re.search(r'\| \+\d+\.\d \[\+\d+\.\d, \+\d+\.\d\]\* \|$', line), line
    # one seed: ± is the bootstrap SE and the footnote says what the interval covers
    assert f"± {100 * casc['se']:.1f}" in line
    foot = table.strip().splitlines()[-1]
    assert foot.startswith('Toy protocol: 2 epochs from scratch. Schedule (every row): ')
    assert 'validation-image sampling only, not training noise' in foot and 'B=300' in foot
    # another baseline: recomputed, and the old baseline's Δ is negative and significant
    res2 = attach_statistics(res, root=work, baseline='cascade', num_replicates=300)
    m = res2['statistics']['variants']['mask_rcnn']['segm_mAP']
    assert m['delta'] == pytest.approx(-casc['delta']) and m['ci_high'] < 0


def test_csv_latex_and_plot(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    res = _fixed_statistics(summarize(s, work))
    lines = render(res, 'csv', columns=['segm_mAP']).splitlines()
    assert lines[0] == 'variant,metric,mean,std,n,se,delta,ci_low,ci_high,significant'
    fields = dict(zip(lines[0].split(','), lines[2].split(',')))
    assert fields['variant'] == 'cascade' and fields['metric'] == 'segm_mAP'
    assert float(fields['mean']) == pytest.approx(27.0) and fields['n'] == '2'
    assert float(fields['std']) == pytest.approx(1.41421, rel=1e-4)  # over the two seeds
    assert float(fields['se']) == pytest.approx(2.0)
    assert float(fields['delta']) == pytest.approx(1.0)
    assert (float(fields['ci_low']), float(fields['ci_high'])) == pytest.approx((-2.0, 4.1))
    assert fields['significant'] == '0'
    assert len(lines) == 3  # failed variants have no numbers
    latex = render(res, 'latex')
    assert latex.startswith(r'\begin{tabular}') and r'mask\_rcnn' in latex
    assert r'$\Delta$ mask AP [95\% CI]' in latex and r'{\footnotesize Toy protocol' in latex
    with pytest.raises(ValueError, match='baseline'):
        render(res, 'md', baseline='nope')
    png = plot(res, str(tmp_path / 'p.png'))
    assert osp.getsize(png) > 1000


def test_plot_has_error_bars(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg, with_eval=True, seeds=(0, ))
    res = attach_statistics(summarize(s, work), root=work, num_replicates=100)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        captured['fig'] = fig
        return real_savefig(fig, *args, **kwargs)
    plt.Figure.savefig = spy
    try:
        plot(res, str(tmp_path / 'p.png'), speed='inference.s_per_img')
    finally:
        plt.Figure.savefig = real_savefig
    ax1, ax2 = captured['fig'].axes
    # one errorbar container per variant in each panel, with vertical bars
    assert len(ax1.containers) == 2 and all(c.has_yerr for c in ax1.containers)
    assert len(ax2.containers) == 2 and all(c.has_yerr for c in ax2.containers)


SPEC_DIR = osp.join(osp.dirname(__file__), '..', 'configs', 'ablations', 'specs')


@pytest.mark.parametrize('spec_name', sorted(f for f in __import__('os').listdir(SPEC_DIR)
                                             if f.endswith('.py')))
def test_shipped_specs_resolve_and_every_variant_builds(spec_name, monkeypatch):
    from cascade_seg.ablation.spec import build_variant_config
    from cascade_seg.registry import MODELS
    import cascade_seg.models  # noqa: F401
    monkeypatch.chdir(osp.join(SPEC_DIR, '..', '..', '..'))
    spec = load_spec(osp.join('configs', 'ablations', 'specs', spec_name))
    assert spec.protocol and '\n' not in spec.protocol  # one line under the table
    hashes = set()
    for variant in spec.variants:
        cfg = build_variant_config(spec, variant)
        model = MODELS.build(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0
        hashes.add(config_hash(cfg, 0))
    # every variant differs from every other one
    assert len(hashes) == len(spec.variants)


def test_paper_numbers_reach_the_table():
    from cascade_seg.ablation import render
    from cascade_seg.ablation.spec import load_spec
    spec = load_spec(osp.join(SPEC_DIR, 'panet.py'))
    assert [v.paper.get('segm_mAP') for v in spec.variants] == [35.7, 36.4, None, 36.9, 37.6]
    row = dict(status='done', seeds=[0], mean={'segm_mAP': 0.25}, std={'segm_mAP': 0.0})
    results = dict(report=dict(columns=['segm_mAP']), variants=[
        dict(row, name='baseline', paper=dict(segm_mAP=35.7)), dict(row, name='+AFP')])
    table = render(results, 'md', delta=[])
    header, first, second = [l for l in table.splitlines() if l.startswith('|')][0:4:2] + \
        [l for l in table.splitlines() if l.startswith('| +AFP')]
    assert 'paper mask AP' in header and '35.7' in first and second.rstrip().endswith('|  |')
    assert "the publication's own number" in table


@pytest.mark.parametrize('freeze', [True, False])
def test_footnote_states_the_shared_trunk_protocol(freeze):
    from cascade_seg.ablation.table import footnote
    row = dict(status='done', seeds=[0], schedule='500 iterations')
    results = dict(protocol='Toy', variants=[dict(row, name='a')], trunk=dict(
        modules=['backbone', 'neck'], freeze=freeze, schedule='1000 iterations'))
    line = footnote(results)
    assert 'Shared trunk (backbone, neck): trained once per seed (1000 iterations)' in line
    if freeze:
        assert 'loaded and frozen in every row, which trains the rest' in line
    else:
        assert 'frozen' not in line
        assert 'initialisation of those modules in every row, which trains its whole' in line


def test_specs_that_differ_in_speed_settings_share_their_trunk(tmp_path, base_cfg):
    from cascade_seg.ablation.runner import prepare_run
    keys = []
    for i, speed in enumerate(['dict(img_size=128, runs=5)', 'dict(img_size=256, runs=3)']):
        spec = load_spec(_write(tmp_path / f'spec{i}.py', f"""
base = {base_cfg!r}
variants = [dict(name='a')]
speed = {speed}
trunk = dict(overrides={{'train_cfg.max_epochs': 2}})
"""))
        keys.append((prepare_run(spec, spec.trunk.variant, 0)[1],
                     prepare_run(spec, spec.variants[0], 0)[1]))
    assert keys[0][0] == keys[1][0]  # one trained trunk serves both specs
    assert keys[0][1] != keys[1][1]  # but the variants are benchmarked differently
