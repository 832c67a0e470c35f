"""VGG with batch norm for CIFAR (``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``).

Reproduces ``models/vgg.py`` of RepDistiller (also ``mdistiller/models/cifar/vgg.py``):
the zoo names ``vggN`` map to the reference ``vggN_bn`` builders (as in mdistiller's
``cifar_model_dict``).  Five conv blocks ``block0..block4`` (each a Sequential of
``Conv2d(bias=True), BatchNorm2d, ReLU`` with the last ReLU dropped), parameter-free
``pool0..pool3`` max-pools and ``pool4`` adaptive average pool, and a single
``classifier = Linear(512, num_classes)``.  ``forward`` returns logits only.

As in the reference, ``pool3`` is applied only for 64x64 inputs (Tiny-ImageNet);
other sizes work thanks to the adaptive ``pool4`` (any input >= 8x8).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .common import init_scaled_normal
from .registry import register_model

__all__ = ["VGG", "CFG"]

CFG: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
    "S": [[64], [128], [256], [512], [512]],
}


class VGG(nn.Module):
    """CIFAR VGG: ``block0..4``, ``pool0..4``, ``classifier``.

    Args:
        cfg: Five lists of conv widths (see :data:`CFG`).
        batch_norm: Insert BatchNorm after each conv (the zoo always uses True).
        num_classes: Classifier outputs.
        in_channels: Input image channels.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        cfg: list[list[int]],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.block0 = self._make_layers(cfg[0], batch_norm, in_channels)
        self.block1 = self._make_layers(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = self._make_layers(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = self._make_layers(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = self._make_layers(cfg[4], batch_norm, cfg[3][-1])

        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))

        self.classifier = nn.Linear(512, num_classes)
        self.stage_channels = [c[-1] for c in cfg]
        init_scaled_normal(self)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, num_classes)`` logits."""
        h = x.shape[2]
        x = F.relu(self.block0(x))
        x = self.pool0(x)
        x = F.relu(self.block1(x))
        x = self.pool1(x)
        x = F.relu(self.block2(x))
        x = self.pool2(x)
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        x = self.pool4(x)
        x = x.reshape(x.size(0), -1)
        return self.classifier(x)

    @staticmethod
    def _make_layers(
        cfg: list[int], batch_norm: bool = False, in_channels: int = 3
    ) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
        # The reference drops each block's last ReLU (applied in forward instead).
        return nn.Sequential(*layers[:-1])


def _vgg(cfg: str, num_classes: int, in_channels: int, **kwargs) -> VGG:
    kwargs.setdefault("batch_norm", True)
    return VGG(CFG[cfg], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("vgg8")
def vgg8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-8 with BN (configuration "S"; reference ``vgg8_bn``)."""
    return _vgg("S", num_classes, in_channels, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11 with BN (configuration "A"; reference ``vgg11_bn``)."""
    return _vgg("A", num_classes, in_channels, **kwargs)


@register_model("vgg13")
def vgg13(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13 with BN (configuration "B"; reference ``vgg13_bn``)."""
    return _vgg("B", num_classes, in_channels, **kwargs)


@register_model("vgg16")
def vgg16(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16 with BN (configuration "D"; reference ``vgg16_bn``)."""
    return _vgg("D", num_classes, in_channels, **kwargs)


@register_model("vgg19")
def vgg19(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19 with BN (configuration "E"; reference ``vgg19_bn``)."""
    return _vgg("E", num_classes, in_channels, **kwargs)
