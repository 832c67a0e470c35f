"""MobileNetV2 for CIFAR (zoo name ``MobileNetV2`` = RepDistiller ``mobile_half``).

Reproduces ``models/mobilenetv2.py`` of RepDistiller (also
``mdistiller/models/cifar/mobilenetv2.py``): expansion ``T=6``, ``width_mult=0.5``,
stride-2 stem, ``blocks`` ModuleList of Sequentials of ``InvertedResidual``
(``conv`` Sequential of 8 layers), ``conv2`` 1x1 to 1280 channels, ``avgpool`` and
``classifier = Sequential(Linear)``, with identical parameter names.  ``forward``
returns logits only.

Total stride is 32, so a 32x32 input reaches the pool at 1x1.
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import init_scaled_normal
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2"]


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 conv -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    """1x1 conv -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Pointwise expand -> depthwise 3x3 -> linear pointwise, residual if shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            # pw
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            # dw
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            # pw-linear
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2.

    Args:
        T: Expansion ratio of the inverted residuals (after the first stage).
        feature_dim: Number of classes (reference name).
        input_size: Nominal input resolution (multiple of 32); sets the final
            ``AvgPool2d(input_size // 16, ceil_mode=True)`` as in the reference.
        width_mult: Channel multiplier.
        remove_avg: Skip the final average pool (reference option).
        in_channels: Input image channels.

    Shapes: ``(B, in_channels, input_size, input_size) -> (B, feature_dim)``.
    """

    def __init__(
        self,
        T: int,
        feature_dim: int,
        input_size: int = 32,
        width_mult: float = 1.0,
        remove_avg: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.remove_avg = remove_avg
        # t, c, n, s
        self.interverted_residual_setting = [
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(in_channels, input_channel, 2)

        self.blocks = nn.ModuleList([])
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            layers: list[nn.Module] = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // (32 // 2), ceil_mode=True)
        self.stage_channels = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]
        init_scaled_normal(self)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, 32, 32) -> (B, num_classes)`` logits."""
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out)
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        out = out.reshape(out.size(0), -1)
        return self.classifier(out)


@register_model("MobileNetV2")
def mobile_half(num_classes: int = 100, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """Half-width CIFAR MobileNetV2 (``T=6``, ``width_mult=0.5``; reference ``mobile_half``)."""
    kwargs.setdefault("T", 6)
    kwargs.setdefault("width_mult", 0.5)
    return MobileNetV2(feature_dim=num_classes, in_channels=in_channels, **kwargs)
