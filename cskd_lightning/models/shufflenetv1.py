"""ShuffleNetV1 for CIFAR (zoo name ``ShuffleV1``).

Reproduces ``models/ShuffleNetv1.py`` of RepDistiller (also
``mdistiller/models/cifar/ShuffleNetv1.py``): 1x1 stem to 24 channels (no
down-sampling), three stages of grouped-conv bottlenecks (out planes
240/480/960, 4/8/4 blocks, 3 groups) and a ``linear`` head, with identical
parameter names.  ``forward`` returns logits only.

Inputs must be 32x32 (three stride-2 stages, then a 4x4 average pool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .common import ShuffleBlock, conv_bn
from .registry import register_model

__all__ = ["ShuffleBlock", "Bottleneck", "ShuffleNet"]


class Bottleneck(nn.Module):
    """ShuffleNet unit; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups
        self.conv1, self.bn1 = conv_bn(in_planes, mid_planes, groups=g)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2, self.bn2 = conv_bn(mid_planes, mid_planes, 3, stride, groups=mid_planes)
        self.conv3, self.bn3 = conv_bn(mid_planes, out_planes, groups=groups)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNet(nn.Module):
    """``conv1, bn1, layer1..3, linear``.

    Args:
        cfg: ``{"out_planes": [...], "num_blocks": [...], "groups": int}``.
        num_classes: Classifier outputs.
        in_channels: Input image channels.

    Shapes: ``(B, in_channels, 32, 32) -> (B, num_classes)``.
    """

    def __init__(self, cfg: dict, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        out_planes = cfg["out_planes"]
        num_blocks = cfg["num_blocks"]
        groups = cfg["groups"]
        self.conv1, self.bn1 = conv_bn(in_channels, 24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(
                Bottleneck(self.in_planes, out_planes - cat_planes, stride=stride, groups=groups)
            )
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 32, 32) -> (B, num_classes)`` logits."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


@register_model("ShuffleV1")
def shuffle_v1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNet:
    """ShuffleNetV1 (groups 3, out planes 240/480/960, blocks 4/8/4)."""
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, num_classes=num_classes, in_channels=in_channels, **kwargs)
