"""Wide ResNets for CIFAR (``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``).

Reproduces ``models/wrn.py`` of RepDistiller (also ``mdistiller/models/cifar/wrn.py``)
with identical parameter names (``conv1``, ``block{1,2,3}.layer.N.{bn1,conv1,bn2,
conv2,convShortcut}``, ``bn1``, ``fc``).  ``forward`` returns logits only.

Inputs must be 32x32 (strides 1/2/2, then an 8x8 average pool).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet"]


class BasicBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv x2); 1x1 ``convShortcut`` if widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.equalInOut:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:
            # The reference pre-activates x itself when the widths differ, so the
            # shortcut conv also sees relu(bn1(x)).
            x = self.relu1(self.bn1(x))
            out = x
            assert self.convShortcut is not None
            shortcut = self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` blocks stored as ``self.layer`` (Sequential)."""

    def __init__(
        self,
        nb_layers: int,
        in_planes: int,
        out_planes: int,
        block: type[BasicBlock],
        stride: int,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                block(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: ``conv1, block1..3, bn1, fc``; depth must be ``6n + 4``.

    Shapes: ``(B, in_channels, 32, 32) -> (B, num_classes)``.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        widen_factor: int = 1,
        drop_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        n_channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        if (depth - 4) % 6 != 0:
            raise ValueError("WideResNet depth should be 6n+4")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(
            in_channels, n_channels[0], kernel_size=3, stride=1, padding=1, bias=False
        )
        self.block1 = NetworkBlock(n, n_channels[0], n_channels[1], BasicBlock, 1, drop_rate)
        self.block2 = NetworkBlock(n, n_channels[1], n_channels[2], BasicBlock, 2, drop_rate)
        self.block3 = NetworkBlock(n, n_channels[2], n_channels[3], BasicBlock, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(n_channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(n_channels[3], num_classes)
        self.nChannels = n_channels[3]
        self.stage_channels = n_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 32, 32) -> (B, num_classes)`` logits."""
        out = self.conv1(x)
        out = self.block1(out)
        out = self.block2(out)
        out = self.block3(out)
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = out.reshape(-1, self.nChannels)
        return self.fc(out)


def _wrn(depth: int, k: int, num_classes: int, in_channels: int, **kwargs) -> WideResNet:
    return WideResNet(
        depth=depth, num_classes=num_classes, widen_factor=k, in_channels=in_channels, **kwargs
    )


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-16-1."""
    return _wrn(16, 1, num_classes, in_channels, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-16-2."""
    return _wrn(16, 2, num_classes, in_channels, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-1."""
    return _wrn(40, 1, num_classes, in_channels, **kwargs)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-2."""
    return _wrn(40, 2, num_classes, in_channels, **kwargs)
