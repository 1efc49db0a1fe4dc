"""Ablation specs: a base config, named variants (overrides or config paths), what to run.

A spec is an mmengine python config::

    base = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_r18_fpn_synthetic.py'
    variants = [
        dict(name='mask_first', overrides={'model.roi_head.mask_stages': 'first'}),
        dict(name='mask_last', overrides={'model.roi_head.mask_stages': 'last'}),
        dict(name='htc', config='configs/htc/htc_r18_fpn_synthetic.py'),
    ]
    common_overrides = {'train_cfg.max_epochs': 6}   # applied to every variant, first
    run = dict(train=True, test=True, speed=['inference', 'train'])
    speed = dict(img_size=128, threads=2, warmup=1, runs=3)
    seeds = [0]
    report = dict(baseline='mask_first', columns=['bbox_mAP', 'segm_mAP'],
                  delta=['segm_mAP'])   # the metrics that get a "Δ [95% CI]" column
    # a variant may carry paper=dict(segm_mAP=36.4): the published number (AP in %), printed
    # in a "paper" column beside ours
    protocol = 'R18-FPN from scratch on the synthetic set, 6 epochs'  # printed under the table
    precision = 'bf16'   # optional: every variant's precision (training, test and speed);
                         # a variant's override '+precision' wins, tools/ablate.py --precision
                         # wins over both (engine/precision.py)
    # optional shared trunk: trained once per seed (common_overrides, then these overrides),
    # then loaded into every variant and, with freeze, kept frozen while the variant trains
    trunk = dict(config=base, overrides={'train_cfg.max_iters': 800},
                 modules=('backbone', 'neck', 'proposal_generator'), freeze=True)

Override keys are dotted paths into the resolved config (the ``--cfg-options`` syntax).
A key whose parent does not exist, or whose leaf is not in its parent, is an error that
names the variant and the key: a typo must never silently add a new unused field.
Use ``'+key'`` to add a field deliberately.
"""
import copy
import hashlib
import json
import os.path as osp
from dataclasses import dataclass, field

from mmengine.config import Config, ConfigDict

DEFAULT_RUN = dict(train=True, test=True, speed=('inference', 'train'))
DEFAULT_SPEED = dict(img_size=512, threads=2, warmup=1, runs=3, device='cpu')


class OverrideError(KeyError):
    """An override names a key that is not in the variant's config."""

    def __str__(self):
        return self.args[0]


@dataclass
class Variant:
    name: str
    config: str
    overrides: dict = field(default_factory=dict)
    checkpoint: str = None  # eval-only variants
    paper: dict = field(default_factory=dict)  # the paper's numbers for this row, by metric
    cost: float = 1.0  # relative run time: with several jobs the costliest runs start first


TRUNK_NAME = '_trunk'


@dataclass
class Trunk:
    """A shared trunk: the modules ``modules`` of ``variant``'s trained model are loaded into
    every variant of the spec (and frozen with ``freeze``)."""
    variant: Variant
    modules: tuple = ('backbone', 'neck', 'proposal_generator')
    freeze: bool = True


@dataclass
class AblationSpec:
    path: str
    variants: list
    common_overrides: dict
    run: dict
    speed: dict
    seeds: list
    report: dict
    protocol: str = None  # one line stated under the table (what was trained, how)
    trunk: Trunk = None   # trained once per seed and shared by every variant
    precision: str = None  # the variants' precision unless a variant overrides it
    force_precision: str = None  # the command line's --precision: wins over everything

    @property
    def name(self):
        return osp.splitext(osp.basename(self.path))[0]


def _resolve(path, spec_dir):
    """Config paths in a spec are relative to the working directory, else to the spec."""
    if osp.isabs(path) or osp.exists(path):
        return path
    candidate = osp.join(spec_dir, path)
    return candidate if osp.exists(candidate) else path


def load_spec(path):
    cfg = Config.fromfile(path)
    spec_dir = osp.dirname(osp.abspath(path))
    base = cfg.get('base')
    variants = []
    seen = set()
    for i, v in enumerate(cfg.get('variants', [])):
        v = dict(v)
        name = v.get('name') or f'variant{i}'
        if name in seen:
            raise ValueError(f'{path}: variant name {name!r} is used twice')
        seen.add(name)
        config = v.get('config') or base
        if config is None:
            raise ValueError(f'{path}: variant {name!r} has no config and the spec has no base')
        variants.append(Variant(name=name, config=_resolve(config, spec_dir),
                                overrides=dict(v.get('overrides', {})),
                                checkpoint=v.get('checkpoint'), paper=_paper(v, path, name),
                                cost=float(v.get('cost', 1.0))))
    if not variants:
        raise ValueError(f'{path}: the spec defines no variants')
    run = {**DEFAULT_RUN, **dict(cfg.get('run', {}))}
    if isinstance(run['speed'], str):
        run['speed'] = (run['speed'], )
    return AblationSpec(path=path, variants=variants,
                        common_overrides=dict(cfg.get('common_overrides', {})), run=run,
                        speed={**DEFAULT_SPEED, **dict(cfg.get('speed', {}))},
                        seeds=list(cfg.get('seeds', [0])), report=dict(cfg.get('report', {})),
                        protocol=_one_line(cfg.get('protocol'), path),
                        precision=_precision(cfg.get('precision'), path),
                        trunk=_trunk(cfg.get('trunk'), base, spec_dir, path))


def _precision(value, path):
    from cascade_seg.engine.precision import normalize_precision
    try:
        return normalize_precision(value)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None


def _trunk(trunk, base, spec_dir, path):
    if trunk is None:
        return None
    trunk = dict(trunk)
    unknown = set(trunk) - {'config', 'overrides', 'modules', 'freeze'}
    if unknown:
        raise ValueError(f'{path}: trunk has unknown keys {sorted(unknown)}')
    config = trunk.get('config') or base
    if config is None:
        raise ValueError(f'{path}: the trunk has no config and the spec has no base')
    variant = Variant(name=TRUNK_NAME, config=_resolve(config, spec_dir),
                      overrides=dict(trunk.get('overrides', {})))
    modules = tuple(trunk.get('modules', Trunk.modules))
    return Trunk(variant=variant, modules=modules, freeze=bool(trunk.get('freeze', True)))


def _paper(variant, path, name):
    """``paper=dict(segm_mAP=36.4)``: published numbers (AP in %) the table prints beside ours."""
    paper = dict(variant.get('paper') or {})
    for k, v in paper.items():
        if not isinstance(v, (int, float)):
            raise ValueError(f'{path}: variant {name!r}: paper[{k!r}] must be a number')
    return paper


def _one_line(text, path):
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f'{path}: protocol must be a string (one line), got {type(text).__name__}')
    return ' '.join(text.split())


def apply_overrides(cfg, overrides, variant_name):
    """Set dotted keys on ``cfg`` in place, refusing keys that do not exist."""
    for dotted, value in overrides.items():
        add = dotted.startswith('+')
        keys = dotted.lstrip('+').split('.')
        node = cfg._cfg_dict if isinstance(cfg, Config) else cfg
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, variant_name, dotted, keys[:depth + 1])
        leaf = keys[-1]
        if not add and not _has(node, leaf):
            raise OverrideError(f'variant {variant_name!r}: override key {dotted!r} does not exist '
                                f'in its config (no {".".join(keys)!r}); prefix it with "+" to add it')
        if isinstance(value, dict):
            value = ConfigDict(value)
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return cfg


def _has(node, key):
    if isinstance(node, list):
        return key.isdigit() and int(key) < len(node)
    return isinstance(node, dict) and key in node


def _child(node, key, variant_name, dotted, path):
    if not _has(node, key):
        raise OverrideError(f'variant {variant_name!r}: override key {dotted!r} does not exist '
                            f'in its config (no {".".join(path)!r})')
    return node[int(key)] if isinstance(node, list) else node[key]


def build_variant_config(spec, variant):
    cfg = Config.fromfile(variant.config)
    if spec.precision is not None:
        cfg.precision = spec.precision
    apply_overrides(cfg, spec.common_overrides, variant.name)
    apply_overrides(cfg, variant.overrides, variant.name)
    if spec.force_precision is not None:
        cfg.precision = spec.force_precision
    return cfg


def config_hash(cfg, seed, extra=None):
    """Hash of everything that determines a variant's result (work_dir excluded)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop('work_dir', None)
    payload = json.dumps(dict(cfg=cfg.to_dict(), seed=seed, extra=extra), sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
