"""Cheap image transforms shared by the datamodules.

Tensor-level helpers operate on a single image tensor of shape ``(C, H, W)`` (``uint8``
or floating point) and are cheaper than their PIL counterparts for in-memory datasets
(digits, Fashion-MNIST, CIFAR). :class:`Cutout` and :class:`TwoViewTransform` implement
the strong/weak view pipeline of the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import RandAugment

from cskd_lightning.errors import InputError

__all__ = [
    "Cutout",
    "TwoViewTransform",
    "RandomCropTensor",
    "RandomHorizontalFlipTensor",
    "ToFloatNormalize",
    "TensorRandAugment",
]


class RandomCropTensor:
    """Zero-pad a ``(C, H, W)`` tensor by ``padding`` on each side, then take a random
    ``size x size`` crop (``torchvision.transforms.RandomCrop(size, padding)`` for tensors).
    ``size`` may also be ``(height, width)`` for non-square crops.

    Output: tensor of shape ``(C, height, width)`` and the input dtype.
    """

    def __init__(self, size: int | Sequence[int], padding: int = 0) -> None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height <= 0 or width <= 0 or padding < 0:
            raise InputError(
                f"RandomCropTensor needs size > 0 and padding >= 0, got {size}, {padding}"
            )
        self.size = size if isinstance(size, int) else (int(height), int(width))
        self.height, self.width = int(height), int(width)
        self.padding = int(padding)

    def __call__(self, img: Tensor) -> Tensor:
        c, h, w = img.shape
        p = self.padding
        if p > 0:
            padded = img.new_zeros((c, h + 2 * p, w + 2 * p))
            padded[:, p : p + h, p : p + w] = img
        else:
            padded = img
        ph, pw = padded.shape[-2:]
        if ph < self.height or pw < self.width:
            raise InputError(f"crop size {self.size} larger than padded image {ph}x{pw}")
        top = int(torch.randint(0, ph - self.height + 1, (1,)))
        left = int(torch.randint(0, pw - self.width + 1, (1,)))
        return padded[:, top : top + self.height, left : left + self.width]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


class RandomHorizontalFlipTensor:
    """Flip a ``(C, H, W)`` tensor along the width axis with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: Tensor) -> Tensor:
        if float(torch.rand(())) < self.p:
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class ToFloatNormalize:
    """Convert a ``(C, H, W)`` image to ``float32``, divide by ``scale`` (255 for ``uint8``
    images, 1 for images already in ``[0, 1]``) and normalise per channel:
    ``(x / scale - mean) / std``.

    Output: ``float32`` tensor of shape ``(C, H, W)``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 255.0) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        if (self.std <= 0).any():
            raise InputError(f"std must be positive, got {list(std)}")
        self.scale = float(scale)

    def __call__(self, img: Tensor) -> Tensor:
        x = img.to(torch.float32)
        if self.scale != 1.0:
            x = x / self.scale
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()}, scale={self.scale})"
        )


class TensorRandAugment:
    """``torchvision.transforms.RandAugment(num_ops, magnitude)`` for ``(C, H, W)`` tensors
    (``uint8``, or floating point in ``[0, 1]``, e.g. the pre-scaled digits) and PIL images.

    Tensors are converted to a PIL image (``C`` of 1 or 3), augmented and converted back to the
    input dtype: PIL is what the method's reference code uses, and torchvision's tensor kernels
    are far slower on tiny images when intra-op threads compete for the CPU.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9) -> None:
        self.op = RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, img: Any) -> Any:
        if not isinstance(img, Tensor):
            return self.op(img)
        is_float = img.is_floating_point()
        u8 = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8) if is_float else img
        arr = u8.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        out = torch.from_numpy(np.asarray(self.op(pil), dtype=np.uint8).copy())
        out = out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)
        return out.to(img.dtype) / 255.0 if is_float else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.op.num_ops}, magnitude={self.op.magnitude})"


class Cutout:
    """Zero a random square of a normalised ``(C, H, W)`` tensor. It is applied after
    normalisation, so the patch takes the value 0, i.e. the dataset mean.

    As in the FixMatch-style ``CutoutAbs`` used by the method's reference code: the side is
    drawn uniformly from ``1..max_size`` where ``max_size = round(max_fraction * min(H, W))``
    (half the image side by default), the centre uniformly over the image, and the square is
    clipped at the borders. Pass ``size`` to fix the side instead (``max_size = size`` and
    ``random_size=False``).

    Output: a new tensor of the same shape and dtype.
    """

    def __init__(
        self,
        size: int | None = None,
        max_fraction: float = 0.5,
        random_size: bool = True,
    ) -> None:
        if size is not None and size < 0:
            raise InputError(f"Cutout size must be >= 0, got {size}")
        if not 0.0 <= max_fraction <= 1.0:
            raise InputError(f"Cutout max_fraction must be in [0, 1], got {max_fraction}")
        self.size = size
        self.max_fraction = float(max_fraction)
        self.random_size = random_size if size is None else False

    def _side(self, h: int, w: int) -> int:
        max_side = self.size if self.size is not None else round(self.max_fraction * min(h, w))
        if max_side <= 0:
            return 0
        if not self.random_size:
            return int(max_side)
        return int(torch.randint(1, int(max_side) + 1, (1,)))

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        side = self._side(h, w)
        out = img.clone()
        if side == 0:
            return out
        cy = int(torch.randint(0, h, (1,)))
        cx = int(torch.randint(0, w, (1,)))
        y0, y1 = max(cy - side // 2, 0), min(cy - side // 2 + side, h)
        x0, x1 = max(cx - side // 2, 0), min(cx - side // 2 + side, w)
        out[..., y0:y1, x0:x1] = 0
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, max_fraction={self.max_fraction}, "
            f"random_size={self.random_size})"
        )


class TwoViewTransform:
    """Return ``(weak(img), strong(img))`` for the same input image.

    Used for the training set in ``two_view`` mode, so that training batches become
    ``((x_weak, x_strong), y)`` with ``x_weak`` and ``x_strong`` both ``(B, C, H, W)``.
    """

    def __init__(self, weak: Callable[[Any], Tensor], strong: Callable[[Any], Tensor]) -> None:
        self.weak = weak
        self.strong = strong

    def __call__(self, img: Any) -> tuple[Tensor, Tensor]:
        return self.weak(img), self.strong(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weak={self.weak!r}, strong={self.strong!r})"
