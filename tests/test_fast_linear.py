"""Linear layers whose float32 CPU products run on oneDNN: same values and gradients as
F.linear, taken only where they should be."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade_seg.models import fast_linear
from cascade_seg.models.fast_linear import Linear, linear, onednn_linear_enabled

needs_op = pytest.mark.skipif(not fast_linear._HAS_OP, reason='torch built without oneDNN')


def _count_gemms(monkeypatch):
    calls = []
    real = fast_linear._gemm

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)
    monkeypatch.setattr(fast_linear, '_gemm', counting)
    return calls


@needs_op
@pytest.mark.parametrize('bias', [True, False])
def test_values_and_gradients_equal_f_linear(monkeypatch, bias):
    calls = _count_gemms(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 300, generator=gen)
    w = torch.randn(64, 300, generator=gen) * 0.05
    b = torch.randn(64, generator=gen) if bias else None
    g = torch.randn(37, 64, generator=gen)
    ours = [t.clone().requires_grad_() for t in (x, w) + ((b, ) if bias else ())]
    ref = [t.clone().requires_grad_() for t in (x, w) + ((b, ) if bias else ())]
    out = linear(*ours)
    expected = F.linear(*ref)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.backward(g)
    expected.backward(g)
    for a, e in zip(ours, ref):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-4)
    assert len(calls) == 3  # forward, input gradient, weight gradient all on oneDNN


@needs_op
def test_leading_dims_and_frozen_weight(monkeypatch):
    calls = _count_gemms(monkeypatch)
    layer = Linear(16, 8)
    layer.weight.requires_grad_(False)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 5, 8)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None
    assert len(calls) == 2  # no weight-gradient product for a frozen weight


def test_other_cases_take_f_linear(monkeypatch):
    calls = _count_gemms(monkeypatch)
    layer = Linear(16, 8)
    x = torch.randn(4, 16)
    assert Linear(16, 8).double()(x.double()).dtype == torch.float64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's own (oneDNN bf16) path
    assert layer(torch.zeros(0, 16)).shape == (0, 8)
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated, still used by export
        traced = torch.jit.trace(layer, x, check_trace=False)
    graph = str(traced.graph)
    assert 'aten::linear' in graph and 'mkldnn' not in graph  # exportable
    torch.testing.assert_close(traced(x), F.linear(x, layer.weight, layer.bias))
    assert calls == []  # none of the above called oneDNN's GEMM
    monkeypatch.setenv('CASCADE_SEG_ONEDNN_LINEAR', '0')
    assert not onednn_linear_enabled()
    layer(x)
    assert calls == []


def test_state_dict_is_nn_linear():
    a, b = nn.Linear(6, 3), Linear(6, 3)
    b.load_state_dict(a.state_dict())
    assert list(b.state_dict()) == list(a.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(b(x), a(x))
