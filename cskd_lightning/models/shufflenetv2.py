"""ShuffleNetV2 for CIFAR (zoo name ``ShuffleV2``, net size 1).

Reproduces ``models/ShuffleNetv2.py`` of RepDistiller (also
``mdistiller/models/cifar/ShuffleNetv2.py``): 1x1 stem to 24 channels, three
stages (each a ``DownBlock`` then ``BasicBlock`` s), ``conv2``/``bn2`` 1x1 to 1024
channels and a ``linear`` head, with identical parameter names.  ``forward``
returns logits only.

Inputs must be 32x32 (three stride-2 stages, then a 4x4 average pool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .common import ShuffleBlock, conv_bn
from .registry import register_model

__all__ = ["ShuffleBlock", "SplitBlock", "BasicBlock", "DownBlock", "ShuffleNetV2", "CONFIGS"]

CONFIGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class SplitBlock(nn.Module):
    """Split channels at ``ratio``: returns ``(x[:, :c], x[:, c:])``."""

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlock(nn.Module):
    """Stride-1 unit: split, 1x1 -> dw 3x3 -> 1x1 on one half, concat, shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1, self.bn1 = conv_bn(in_channels, in_channels)
        self.conv2, self.bn2 = conv_bn(in_channels, in_channels, 3, groups=in_channels)
        self.conv3, self.bn3 = conv_bn(in_channels, in_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        out = torch.cat([x1, out], 1)
        return self.shuffle(out)


class DownBlock(nn.Module):
    """Stride-2 unit with two branches (left: dw + 1x1; right: 1x1 + dw + 1x1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        # left
        self.conv1, self.bn1 = conv_bn(in_channels, in_channels, 3, 2, groups=in_channels)
        self.conv2, self.bn2 = conv_bn(in_channels, mid_channels)
        # right
        self.conv3, self.bn3 = conv_bn(in_channels, mid_channels)
        self.conv4, self.bn4 = conv_bn(mid_channels, mid_channels, 3, 2, groups=mid_channels)
        self.conv5, self.bn5 = conv_bn(mid_channels, mid_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        out = torch.cat([out1, out2], 1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    """``conv1, bn1, layer1..3, conv2, bn2, linear``.

    Args:
        net_size: Key of :data:`CONFIGS` (width setting).
        num_classes: Classifier outputs.
        in_channels: Input image channels.

    Shapes: ``(B, in_channels, 32, 32) -> (B, num_classes)``.
    """

    def __init__(self, net_size: float = 1, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        out_channels = CONFIGS[net_size]["out_channels"]
        num_blocks = CONFIGS[net_size]["num_blocks"]
        self.conv1, self.bn1 = conv_bn(in_channels, 24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2, self.bn2 = conv_bn(out_channels[2], out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.stage_channels = out_channels

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        for _ in range(num_blocks):
            layers.append(BasicBlock(out_channels))
            self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 32, 32) -> (B, num_classes)`` logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


@register_model("ShuffleV2")
def shuffle_v2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (out channels 116/232/464/1024, blocks 3/7/3)."""
    kwargs.setdefault("net_size", 1)
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)
