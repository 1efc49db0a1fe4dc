"""CI policy: without the MMDetection reference a parity test skips locally and fails in CI."""
import pytest

import parity_utils


@pytest.mark.parametrize('ci, outcome', [('true', pytest.fail.Exception),
                                         ('1', pytest.fail.Exception),
                                         ('', pytest.skip.Exception)])
def test_missing_reference_fails_only_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setattr(parity_utils, 'find_mmdet_python', lambda: (None, 'no reference here'))
    monkeypatch.setenv('CI', ci)
    with pytest.raises(outcome, match='no reference here'):
        parity_utils.mmdet_python_or_skip()


def test_ci_entry_point_declares_ci():
    import os.path as osp
    text = open(osp.join(osp.dirname(__file__), '..', '.ci', 'run')).read()
    assert 'export CI="${CI:-true}"' in text
