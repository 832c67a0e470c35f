"""CIFAR-style ImageNet-family ResNets (``ResNet18``, ``ResNet34``, ``ResNet50``, ...).

Reproduces ``models/resnetv2.py`` of RepDistiller (also
``mdistiller/models/cifar/resnetv2.py``): 3x3 stride-1 stem without max-pool,
four stages (64/128/256/512 x expansion), ``shortcut`` Sequential and ``linear``
head, with identical parameter names.  ``forward`` returns logits only.

Pooling is adaptive, so any input size >= 8 works (32x32 on CIFAR, 64x64 on
Tiny-ImageNet).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .common import conv_bn, init_he_fan_out
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNetV2"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The identity (an empty ``Sequential``) where a block keeps the shape, else
    ``Sequential(conv1x1 with stride, bn)``."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(*conv_bn(in_planes, out_planes, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; ``shortcut`` is empty or ``Sequential(conv1x1, bn)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_planes, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (expansion 4) with ``shortcut`` Sequential."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_planes, planes)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = conv_bn(planes, self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetV2(nn.Module):
    """``conv1, bn1, layer1..4, avgpool (adaptive), linear``.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1, self.bn1 = conv_bn(in_channels, 64, 3)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        init_he_fan_out(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        num_blocks: int,
        stride: int,
    ) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers: list[nn.Module] = []
        for s in strides:
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, num_classes)`` logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.avgpool(out).flatten(1))


@register_model("ResNet18")
def resnet18_cifar(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNetV2:
    """CIFAR-style ResNet-18 (RepDistiller ``ResNet18``)."""
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, **kwargs)


@register_model("ResNet34")
def resnet34_cifar(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNetV2:
    """CIFAR-style ResNet-34 (RepDistiller ``ResNet34``)."""
    return ResNetV2(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, **kwargs)


@register_model("ResNet50")
def resnet50_cifar(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNetV2:
    """CIFAR-style ResNet-50 (RepDistiller ``ResNet50``)."""
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, **kwargs)
