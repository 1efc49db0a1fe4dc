from .resnet import BasicBlock, Bottleneck, ResNet
from .vovnet import VoVNet

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet', 'VoVNet']
