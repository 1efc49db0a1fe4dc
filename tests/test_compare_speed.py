"""The like-for-like comparison scripts run end to end in their ``--quick`` mode (one model,
tiny image, one run): same weights on both sides (fp32 detections match), both precisions,
both tasks, a peak RSS per subprocess. The MMDetection one needs the reference interpreter:
skipped without it, except under CI (``CI=true``), as the parity tests."""
import os.path as osp

import pytest
import torch

from parity_utils import REPO, mmdet_python_or_skip
from tests.test_tools import _tool  # loads tools/<name>.py as a module

pytestmark = pytest.mark.slow


def test_compare_mmdet_speed_quick(tmp_path):
    python = mmdet_python_or_skip()
    markdown = tmp_path / 'table.md'
    results = _tool('compare_mmdet_speed').main([
        '--quick', '--models', 'mask_rcnn', '--threads', '1', '--ref-python', python,
        '--work-dir', str(tmp_path / 'work'), '--markdown', str(markdown)])
    cells = results['mask_rcnn']
    assert set(cells) == {(t, p) for t in ('inference', 'train') for p in ('fp32', 'bf16')}
    for cell in cells.values():
        for side in ('ours', 'mmdet'):
            assert cell[side]['times'] and cell[side]['rss_mb'] > 100
        assert cell['ours']['params'] == cell['mmdet']['params']
    fp32 = cells[('inference', 'fp32')]
    assert fp32['ours']['ndet'] == fp32['mmdet']['ndet'] == 100
    from cascade_seg.engine.benchmark import match_detections
    ours, theirs = (torch.load(fp32[s]['dets'], weights_only=True) for s in ('ours', 'mmdet'))
    assert match_detections(theirs, ours) >= 0.95  # the same weights: the same detections
    text = markdown.read_text()
    assert 'CPU:' in text and '**fp32**' in text and '**bf16**' in text
    assert 'bf16 against fp32' in text and '| Mask R-CNN |' in text


def test_compare_torchvision_speed_quick(tmp_path):
    markdown = tmp_path / 'table.md'
    rows = _tool('compare_torchvision_speed').main([
        '--quick', '--threads', '1', '--work-dir', str(tmp_path / 'work'),
        '--markdown', str(markdown)])
    assert [(p, t) for p, t, _ in rows] == [('fp32', 'inference'), ('fp32', 'train'),
                                            ('bf16', 'inference'), ('bf16', 'train')]
    for _, _, cell in rows:
        for side in ('ours', 'torchvision'):
            assert cell[side]['times'] and cell[side]['rss_mb'] > 100
    text = markdown.read_text()
    assert 'CPU:' in text and '100 / 100 (100%)' in text  # fp32: the same detections
