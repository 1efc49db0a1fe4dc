"""Ablation spec parsing, override validation, result aggregation and table rendering
(no model involved; the end-to-end run is in test_ablation_e2e.py)."""
import json
import os.path as osp

import pytest
from mmengine.config import Config

from cascade_seg.ablation import (OverrideError, apply_overrides, config_hash, load_spec, plot,
                                  render, summarize)

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
""")
    s = load_spec(spec)
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


def _fake_results(tmp_path, base_cfg):
    """Per-seed result records as tools/ablate.py writes them, then summarized."""
    spec = _write(tmp_path / 'spec.py', f"""
base = {base_cfg!r}
variants = [dict(name='mask_rcnn'), dict(name='cascade'), dict(name='broken')]
seeds = [0, 1]
report = dict(baseline='mask_rcnn', columns=['bbox_mAP', 'segm_mAP', 'inference.s_per_img'])
""")
    s = load_spec(spec)
    work = tmp_path / 'work'
    values = {'mask_rcnn': [(0.30, 0.25), (0.32, 0.27)], 'cascade': [(0.35, 0.26), (0.37, 0.28)]}
    for name, per_seed in values.items():
        for seed, (box, segm) in enumerate(per_seed):
            rec = dict(name=name, seed=seed, status='done', hash='h',
                       metrics={'coco/bbox_mAP': box, 'coco/segm_mAP': segm,
                                'coco/segm_precision_per_iou': [segm] * 10},
                       speed={'inference': {'s_per_img': 0.1 if name == 'mask_rcnn' else 0.2}})
            d = work / name / f'seed{seed}'
            d.mkdir(parents=True)
            (d / 'result.json').write_text(json.dumps(rec))
    for seed in (0, 1):
        d = work / 'broken' / f'seed{seed}'
        d.mkdir(parents=True)
        (d / 'result.json').write_text(json.dumps(dict(
            name='broken', seed=seed, status='failed',
            error="OverrideError: variant 'broken': override key 'model.x' does not exist")))
    return s, str(work)


def test_summary_mean_std_and_failure(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    res = summarize(s, work)
    rows = {r['name']: r for r in res['variants']}
    assert rows['mask_rcnn']['mean']['bbox_mAP'] == pytest.approx(0.31)
    assert rows['mask_rcnn']['std']['bbox_mAP'] == pytest.approx(0.0141421, rel=1e-4)
    assert rows['cascade']['mean']['inference.s_per_img'] == pytest.approx(0.2)
    assert rows['broken']['status'] == 'failed' and 'model.x' in rows['broken']['error']


def test_markdown_table_matches_snapshot(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    table = render(summarize(s, work), 'md')
    with open(osp.join(DATA, 'ablation_table_snapshot.md')) as f:
        assert table == f.read()


def test_csv_latex_and_plot(tmp_path, base_cfg):
    s, work = _fake_results(tmp_path, base_cfg)
    res = summarize(s, work)
    csv_text = render(res, 'csv', columns=['segm_mAP'])
    assert csv_text.splitlines()[0] == 'variant,mask AP'
    assert csv_text.splitlines()[2].startswith('cascade,27.0 ± 1.4 (+1.0)')
    latex = render(res, 'latex')
    assert latex.startswith(r'\begin{tabular}') and r'mask\_rcnn' in latex
    with pytest.raises(ValueError, match='baseline'):
        render(res, 'md', baseline='nope')
    png = plot(res, str(tmp_path / 'p.png'))
    assert osp.getsize(png) > 1000


SPEC_DIR = osp.join(osp.dirname(__file__), '..', 'configs', 'ablations', 'specs')


@pytest.mark.parametrize('spec_name', sorted(f for f in __import__('os').listdir(SPEC_DIR)
                                             if f.endswith('.py')))
def test_shipped_specs_resolve_and_every_variant_builds(spec_name, monkeypatch):
    from cascade_seg.ablation.spec import build_variant_config
    from cascade_seg.registry import MODELS
    import cascade_seg.models  # noqa: F401
    monkeypatch.chdir(osp.join(SPEC_DIR, '..', '..', '..'))
    spec = load_spec(osp.join('configs', 'ablations', 'specs', spec_name))
    hashes = set()
    for variant in spec.variants:
        cfg = build_variant_config(spec, variant)
        model = MODELS.build(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0
        hashes.add(config_hash(cfg, 0))
    # every variant differs from every other one
    assert len(hashes) == len(spec.variants)
