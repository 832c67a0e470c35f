"""CIFAR ResNets (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``).

Reproduces ``models/resnet.py`` of RepDistiller (HobbitLong/RepDistiller), also
``mdistiller/models/cifar/resnet.py`` (megvii-research/mdistiller), with identical
module/parameter names so that the released CIFAR-100 teacher checkpoints
(``ckpt_epoch_240.pth``, key ``"model"``) load with ``strict=True``.  Only the
feature-returning machinery (``is_feat``/``preact``) is dropped: ``forward``
returns logits only.

Inputs must be 32x32 (three stages, strides 1/2/2, then ``AvgPool2d(8)``).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .common import init_he_fan_out
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or ``downsample`` shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        # No weights: a hook point for the pre-activation feature (out + residual before the
        # last ReLU) that feature distillation reads; state_dict keys are unchanged.
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return F.relu(self.preact(out + residual))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck block (expansion 4)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.preact = nn.Identity()  # the pre-activation hook point (see BasicBlock)

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return F.relu(self.preact(out + residual))


class ResNet(nn.Module):
    """CIFAR ResNet: ``conv1, bn1, layer1..3, avgpool, fc``.

    Args:
        depth: ``6n + 2`` for basic blocks (``9n + 2`` for bottlenecks).
        num_filters: Widths ``[stem, layer1, layer2, layer3]``.
        block_name: ``"basicblock"`` or ``"bottleneck"`` (case-insensitive).
        num_classes: Classifier outputs.
        in_channels: Input image channels.

    Shapes: ``(B, in_channels, 32, 32) -> (B, num_classes)``.
    """

    def __init__(
        self,
        depth: int,
        num_filters: list[int],
        block_name: str = "BasicBlock",
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck]
        if block_name.lower() == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError("With BasicBlock, depth should be 6n+2, e.g. 20, 32, 44, 56, 110")
            n = (depth - 2) // 6
            block = BasicBlock
        elif block_name.lower() == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError("With Bottleneck, depth should be 9n+2, e.g. 20, 29, 47, 56, 110")
            n = (depth - 2) // 9
            block = Bottleneck
        else:
            raise ValueError("block_name should be BasicBlock or Bottleneck")

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)
        self.stage_channels = list(num_filters)

        init_he_fan_out(self)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        # As in the reference: the first block of a stage gets a 1x1 conv + BN
        # shortcut when the stride or the channel count changes (so layer1 of the
        # x4 variants, 32 -> 64 channels, has one; layer1 of resnet8..110 doesn't).
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * block.expansion,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 32, 32) -> (B, num_classes)`` logits."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)  # 32x32
        x = self.layer2(x)  # 16x16
        x = self.layer3(x)  # 8x8
        x = self.avgpool(x)
        x = x.reshape(x.size(0), -1)
        return self.fc(x)


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


def _build(depth: int, filters: list[int], num_classes: int, in_channels: int, **kwargs) -> ResNet:
    return ResNet(depth, filters, "basicblock", num_classes, in_channels, **kwargs)


@register_model("resnet8")
def resnet8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-8, widths 16/16/32/64."""
    return _build(8, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet14")
def resnet14(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-14, widths 16/16/32/64."""
    return _build(14, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet20")
def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-20, widths 16/16/32/64."""
    return _build(20, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-32, widths 16/16/32/64."""
    return _build(32, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-44, widths 16/16/32/64."""
    return _build(44, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-56, widths 16/16/32/64."""
    return _build(56, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-110, widths 16/16/32/64."""
    return _build(110, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-8 with 4x widths 32/64/128/256."""
    return _build(8, _WIDE, num_classes, in_channels, **kwargs)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-32 with 4x widths 32/64/128/256."""
    return _build(32, _WIDE, num_classes, in_channels, **kwargs)
