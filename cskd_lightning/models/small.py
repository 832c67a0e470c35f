"""Small, CPU-fast CNN teacher/student pairs for 1-channel datasets.

* ``digits_teacher`` / ``digits_student``: for sklearn's 8x8 digits (10 classes).
* ``fmnist_teacher`` / ``fmnist_student``: for 28x28 Fashion-MNIST (10 classes).
* ``fmnist_pairs_teacher`` / ``fmnist_pairs_student``: for the 28x56 Fashion-MNIST pairs
  (100 classes, :class:`~cskd_lightning.data.FashionMNISTPairsDataModule`). Their pools keep
  a left and a right cell (``pool_size`` ``(2, 4)`` and ``(1, 2)``): a global average pool
  cannot tell which half an object is in, and the label depends on it.

Each teacher has more than 10x the parameters of its student.  The networks are
stacks of ``Conv3x3(bias=False) -> BatchNorm -> ReLU`` (with optional 2x2
max-pools), then an adaptive average pool to ``pool_size x pool_size`` and a
linear classifier, so they accept any input of at least 8x8 pixels.

Pass ``in_channels=1, num_classes=10`` for these datasets (``create_model``'s
defaults are the CIFAR-100 ones, 3 and 100).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .registry import register_model

__all__ = ["SmallCNN", "SMALL_CONFIGS"]

# name -> (layers, pool_size); a layer is a conv output width (int) or "M" for a
# 2x2 max-pool; pool_size is a side or (height, width).  Students use global average
# pooling (pool_size 1; (1, 2) on the pairs), teachers keep a finer grid, which widens
# the accuracy gap that distillation can close.
SMALL_CONFIGS: dict[str, tuple[Sequence[int | str], int | tuple[int, int]]] = {
    "digits_student": ((4, 8, 8), 1),
    "digits_teacher": ((32, 64, "M", 128), 2),
    "fmnist_student": ((8, "M", 16, "M", 24), 1),
    "fmnist_teacher": ((32, "M", 64, "M", 128), 2),
    "fmnist_pairs_student": ((8, "M", 16, "M", 16), (1, 2)),
    "fmnist_pairs_teacher": ((16, "M", 32, "M", 64), (2, 4)),
}


class SmallCNN(nn.Module):
    """Plain CNN: ``features`` (conv-BN-ReLU / max-pool), ``pool``, ``classifier``.

    Args:
        cfg: Conv widths, with ``"M"`` for a 2x2 max-pool.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        pool_size: Side, or ``(height, width)``, of the adaptive average pool before the
            classifier.
        dropout: Dropout probability before the classifier (0 disables it).

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for ``H, W >= 8``
    (with at most two max-pools).
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 1,
        pool_size: int | tuple[int, int] = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [
                    nn.Conv2d(channels, v, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                channels = v
        self.features = nn.Sequential(*layers)
        pool_h, pool_w = (pool_size, pool_size) if isinstance(pool_size, int) else pool_size
        self.pool = nn.AdaptiveAvgPool2d((pool_h, pool_w))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels * pool_h * pool_w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, num_classes)`` logits."""
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(x.flatten(1)))


def _small(cfg_name: str, num_classes: int, in_channels: int, **kwargs) -> SmallCNN:
    layers, pool_size = SMALL_CONFIGS[cfg_name]
    kwargs.setdefault("pool_size", pool_size)
    return SmallCNN(layers, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("digits_student")
def digits_student(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """Tiny 3-conv CNN (4/8/8 channels, global average pool) for 8x8 digits (~1.0k params)."""
    return _small("digits_student", num_classes, in_channels, **kwargs)


@register_model("digits_teacher")
def digits_teacher(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """3-conv CNN (32/64/pool/128 channels, 2x2 pool) for 8x8 digits (~98k params)."""
    return _small("digits_teacher", num_classes, in_channels, **kwargs)


@register_model("fmnist_student")
def fmnist_student(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """Tiny 3-conv CNN (8/pool/16/pool/24, global average pool) for 28x28 Fashion-MNIST (~5k)."""
    return _small("fmnist_student", num_classes, in_channels, **kwargs)


@register_model("fmnist_teacher")
def fmnist_teacher(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """3-conv CNN (32/pool/64/pool/128 channels, 2x2 pool) for 28x28 Fashion-MNIST (~98k)."""
    return _small("fmnist_teacher", num_classes, in_channels, **kwargs)


@register_model("fmnist_pairs_student")
def fmnist_pairs_student(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """Tiny 3-conv CNN (8/pool/16/pool/16, average pool to 1x2) for the 28x56 Fashion-MNIST
    pairs (6,908 params with 1 channel and 100 classes)."""
    return _small("fmnist_pairs_student", num_classes, in_channels, **kwargs)


@register_model("fmnist_pairs_teacher")
def fmnist_pairs_teacher(num_classes: int = 100, in_channels: int = 3, **kwargs) -> SmallCNN:
    """3-conv CNN (16/pool/32/pool/64, average pool to 2x4) for the 28x56 Fashion-MNIST pairs
    (74,708 params with 1 channel and 100 classes: 10.8x the student)."""
    return _small("fmnist_pairs_teacher", num_classes, in_channels, **kwargs)
