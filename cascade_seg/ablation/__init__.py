"""Config-driven ablations: specs, the variant runner, statistics and table rendering."""
from .runner import failed_runs, failed_variants, run_one, run_spec, summarize
from .spec import AblationSpec, OverrideError, Variant, apply_overrides, config_hash, load_spec
from . import stats
from .table import attach_statistics, load_results, plot, render

__all__ = ['AblationSpec', 'OverrideError', 'Variant', 'apply_overrides', 'config_hash', 'stats',
           'load_spec', 'failed_runs', 'failed_variants', 'run_one', 'run_spec', 'summarize',
           'attach_statistics', 'load_results', 'plot', 'render']
