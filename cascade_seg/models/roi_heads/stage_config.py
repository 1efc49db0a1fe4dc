"""Per-stage configs of the cascade: one shared default per key, changed per stage by
``stage_overrides`` (``s0``, ``s1``, ...), merged the way mmengine merges ``_base_`` configs."""
import copy
import inspect

from cascade_seg.registry import MODELS


def merge_cfg(base, override):
    """mmengine-style recursive merge of ``override`` onto ``base`` (neither is modified).

    Nested dicts merge key by key; any other value (or a dict with ``_delete_=True``) replaces.
    """
    if not isinstance(override, dict):
        return copy.deepcopy(override)
    if not isinstance(base, dict) or override.get('_delete_', False):
        return {k: copy.deepcopy(v) for k, v in override.items() if k != '_delete_'}
    merged = {k: copy.deepcopy(v) for k, v in base.items()}
    for k, v in override.items():
        merged[k] = merge_cfg(merged.get(k), v)
    return merged


def with_class_defaults(cfg, override, registry=MODELS):
    """Fill keys that ``override`` changes but ``cfg`` leaves to the class defaults (e.g. a
    head's ``bbox_coder``), so a partial override merges onto the real default."""
    if not isinstance(cfg, dict) or not isinstance(override, dict) or 'type' not in cfg:
        return cfg
    missing = [k for k, v in override.items() if k not in cfg and isinstance(v, dict)]
    if not missing:
        return cfg
    cfg = dict(cfg)
    cls = cfg['type'] if inspect.isclass(cfg['type']) else registry.get(cfg['type'])
    for klass in cls.__mro__:  # subclasses may pass their defaults on as **kwargs
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        for k in [k for k in missing if k in params and isinstance(params[k].default, dict)]:
            cfg[k] = params[k].default
            missing.remove(k)
    return cfg


def stage_cfgs(defaults, overrides, num_stages, allowed_keys=None):
    """One config per stage: ``defaults`` (a list is taken as already per stage) merged with
    ``overrides['s{t}']``. Unknown stage names or keys raise ``KeyError``."""
    overrides = dict(overrides or {})
    names = {f's{t}' for t in range(num_stages)}
    unknown = set(overrides) - names
    if unknown:
        raise KeyError(f'stage_overrides has {sorted(unknown)}; stages are {sorted(names)}')
    out = []
    for t in range(num_stages):
        base = defaults[t] if isinstance(defaults, (list, tuple)) else defaults
        override = overrides.get(f's{t}') or {}
        if allowed_keys is not None and set(override) - set(allowed_keys):
            raise KeyError(f'stage_overrides.s{t} has {sorted(set(override) - set(allowed_keys))}; '
                           f'allowed keys are {list(allowed_keys)}')
        if allowed_keys is not None:  # module configs: partial overrides of class defaults
            base = {k: with_class_defaults(v, override.get(k)) for k, v in base.items()}
        out.append(merge_cfg(base, override))
    return out


def per_stage(value, num_stages):
    """A key's value for every stage: a list/tuple (MMDetection's style) is already per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f'{len(value)} per-stage configs for {num_stages} stages')
        return list(value)
    return [value] * num_stages


def cfg_get(cfg, key, default=None):
    return default if cfg is None else cfg.get(key, default)
