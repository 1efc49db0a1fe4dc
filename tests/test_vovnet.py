"""VoVNetV2 backbone: layouts, the eSE parameter check, identity paths, freezing."""
import pytest
import torch
import torch.nn.functional as F

from cascade_seg.models.backbones.vovnet import ESE, OSAModule, VoVNet

torch.set_num_threads(1)


def test_v39_ese_parameter_check_and_layouts():
    with torch.device('meta'):
        nets = {a: VoVNet(a, frozen_stages=-1) for a in ('V-39', 'V-57', 'V-99')}
    ese = sum(p.numel() for n, p in nets['V-39'].named_parameters() if '.ese.' in n)
    assert ese == 3_608_832
    assert [[len(s) for s in n.stages] for n in nets.values()] == \
        [[1, 1, 2, 2], [1, 1, 4, 3], [1, 3, 9, 3]]
    net = nets['V-39']
    assert net.out_channels == [256, 512, 768, 1024]
    # the identity path from the second OSA module of a stage on
    assert [[m.identity for m in s] for s in net.stages] == [[False], [False], [False, True],
                                                             [False, True]]
    # 5 conv3x3 of the stage's width; the 1x1 merges the input and all five
    first = net.stages[2][0]
    assert len(first.layers) == 5 and first.concat.conv.in_channels == 512 + 5 * 192


def test_forward_shapes_strides():
    net = VoVNet('V-39', frozen_stages=-1).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(256, 16, 24), (512, 8, 12), (768, 4, 6),
                                                  (1024, 2, 3)]


def test_ese_is_hard_sigmoid_channel_gate_and_osa_identity():
    ese = ESE(4)
    x = torch.randn(2, 4, 5, 5)
    gate = torch.clamp((ese.fc(x.mean((2, 3), keepdim=True)) + 3) / 6, 0, 1)
    assert torch.allclose(ese(x), x * gate, atol=1e-6)
    osa = OSAModule(8, 4, 8, num_layers=2, identity=True).eval()
    with torch.no_grad():
        y = osa(x.repeat(1, 2, 1, 1))
        osa.identity = False
        assert torch.allclose(y - osa(x.repeat(1, 2, 1, 1)), x.repeat(1, 2, 1, 1), atol=1e-6)
    with pytest.raises(ValueError, match='identity'):
        OSAModule(8, 4, 16, identity=True)
    assert F.hardsigmoid(torch.tensor([-4.0, 0.0, 4.0])).tolist() == [0.0, 0.5, 1.0]


def test_frozen_stages_and_norm_eval():
    net = VoVNet('V-39', frozen_stages=2, norm_eval=True)
    net.train()
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for s in net.stages[:2] for p in s.parameters())
    assert all(p.requires_grad for s in net.stages[2:] for p in s.parameters())
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(KeyError, match='V-39'):
        VoVNet('V-42')
