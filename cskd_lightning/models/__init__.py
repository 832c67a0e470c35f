"""Model zoo: CIFAR teachers/students (RepDistiller / mdistiller layouts),
torchvision ImageNet models and small CNNs for 1-channel datasets.

Usage::

    from cskd_lightning.models import create_model, list_models

    model = create_model("resnet32x4", num_classes=100)  # (B, 3, 32, 32) -> (B, 100)

Every model's ``forward(x)`` returns the logits tensor ``(B, num_classes)`` only.
"""

from . import (  # noqa: F401  (imported for their @register_model side effects)
    imagenet,
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    small,
    vgg,
    wrn,
)
from .pretrained import Pretrained
from .registry import count_parameters, create_model, get_model_factory, list_models, register_model

__all__ = [
    "Pretrained",
    "count_parameters",
    "create_model",
    "get_model_factory",
    "list_models",
    "register_model",
]
