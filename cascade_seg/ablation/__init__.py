"""Config-driven ablations: specs, the variant runner and table rendering."""
from .runner import failed_variants, run_one, run_spec, summarize
from .spec import AblationSpec, OverrideError, Variant, apply_overrides, config_hash, load_spec
from .table import load_results, plot, render

__all__ = ['AblationSpec', 'OverrideError', 'Variant', 'apply_overrides', 'config_hash',
           'load_spec', 'failed_variants', 'run_one', 'run_spec', 'summarize', 'load_results',
           'plot', 'render']
