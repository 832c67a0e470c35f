"""Pieces several zoo architectures share, as the reference implementations write them: the
channel shuffle of ShuffleNet V1/V2, the convolution-and-BatchNorm pair and the two weight
initialisations."""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["ShuffleBlock", "conv_bn", "init_he_fan_out", "init_scaled_normal"]


class ShuffleBlock(nn.Module):
    """Channel shuffle ``(N, C, H, W) -> (N, g, C/g, H, W) -> (N, C/g, g, H, W) -> (N, C, H, W)``
    with ``g = groups``."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.reshape(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free ``kernel_size x kernel_size`` convolution padded by ``kernel_size // 2``
    (``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``) and the
    BatchNorm of its output, built in that order (the order the reference code draws the
    convolution's initial weights in). ``groups = in_channels = out_channels``: depthwise."""
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=False,
    )
    return conv, nn.BatchNorm2d(out_channels)


def init_he_fan_out(model: nn.Module) -> None:
    """Convolutions: He normal, fan-out, ReLU gain; BatchNorm and GroupNorm: weight 1, bias 0
    (the CIFAR ResNets and the ImageNet-style ResNets)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def init_scaled_normal(model: nn.Module) -> None:
    """Convolutions: ``N(0, 2 / (k_h k_w C_out))``, bias 0; BatchNorm: weight 1, bias 0; linear:
    ``N(0, 0.01^2)``, bias 0 (VGG and MobileNetV2)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
