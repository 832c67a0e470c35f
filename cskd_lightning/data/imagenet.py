"""ImageNet (or any ImageFolder-style dataset) from ``data_dir/train`` and ``data_dir/val``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from cskd_lightning.errors import InputError, MissingInputError

from .base import BaseDataModule, Transform
from .transforms import ToFloatNormalize

__all__ = ["ImageNetDataModule"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class _PILToNormalizedTensor:
    """PIL RGB image -> normalised ``float32`` tensor ``(3, H, W)`` (``norm`` of its tensor)."""

    def __init__(self, norm: ToFloatNormalize) -> None:
        self.norm = norm

    def __call__(self, img: Any) -> Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return self.norm(pil_to_tensor(img))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.norm!r})"


class ImageNetDataModule(BaseDataModule):
    """ImageNet-style folders: ``ImageFolder(data_dir/train)`` and ``ImageFolder(data_dir/val)``
    (one sub-folder per class, the same class folders in both).

    Training: RandomResizedCrop(image_size) + horizontal flip; evaluation: Resize(image_size *
    256/224) + CenterCrop(image_size); ImageNet normalisation. ``num_classes`` (default 1000) is
    checked against the class folders found in ``setup``. ``val_split`` defaults to 0: the
    ``val`` folder is used for both validation and test; a non-zero value holds out a stratified
    part of ``train`` for validation instead.

    Batches: ``x`` ``float32`` ``(B, 3, image_size, image_size)``, ``y`` ``int64`` ``(B,)``.
    """

    in_channels: int = 3
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    def __init__(
        self, data_dir: str, num_classes: int = 1000, image_size: int = 224, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or image_size < 1:
            raise InputError(
                f"num_classes and image_size must be >= 1, got {num_classes}, {image_size}"
            )
        self.data_dir = str(data_dir)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.classes: list[str] = []

    def load_raw(self) -> tuple[Any, list[int], Any]:
        from torchvision.datasets import ImageFolder

        root = Path(self.data_dir)
        for sub in ("train", "val"):
            if not (root / sub).is_dir():
                raise MissingInputError(
                    f"ImageNet folder {root / sub} not found: data_dir={root} must contain "
                    "train/ and val/ with one sub-folder of images per class",
                    key="data_dir",
                )
        train = ImageFolder(str(root / "train"))
        val = ImageFolder(str(root / "val"))
        if len(train.classes) != self.num_classes:
            raise InputError(
                f"found {len(train.classes)} class folders in {root / 'train'} but "
                f"num_classes={self.num_classes}; set num_classes={len(train.classes)} "
                "or fix the folder",
                key="num_classes",
            )
        if val.classes != train.classes:
            raise InputError(
                f"class folders differ between {root / 'train'} ({len(train.classes)}) and "
                f"{root / 'val'} ({len(val.classes)})"
            )
        self.classes = list(train.classes)
        return train, train.targets, val

    def augment_transform(self) -> Transform:
        from torchvision import transforms as T

        return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip()])

    def eval_geometry(self) -> Transform:
        from torchvision import transforms as T

        resize = round(self.image_size * 256 / 224)
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size)])

    def _normalize_transform(self) -> Transform:
        return _PILToNormalizedTensor(self.normalization())
