"""ImageNet models from torchvision, by name, with optional pretrained weights.

Registered names: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
``mobilenet_v2``, ``mobilenet_v3_small``, ``mobilenet_v3_large``,
``shufflenet_v2_x1_0`` and ``efficientnet_b0`` (the torchvision builders of the
same names; parameter names are torchvision's, so torchvision checkpoints load
strictly).

``weights`` is a torchvision weights enum member name such as
``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (also accepted: the full
``"ResNet18_Weights.IMAGENET1K_V1"`` form or an enum member), or ``None`` for
random initialisation (the default).  Pretrained weights are downloaded by
torchvision on first use.  When pretrained weights are requested with
``num_classes`` different from the checkpoint's (1000), the checkpoint is loaded
as is and the final ``nn.Linear`` is replaced with a freshly initialised one of
``num_classes`` outputs.

Only 3-channel inputs are supported; ``in_channels != 3`` raises ``ValueError``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cskd_lightning.errors import InputError

from .registry import register_model

__all__ = ["TORCHVISION_MODELS", "resolve_weights", "build_torchvision_model"]

TORCHVISION_MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
)


def resolve_weights(name: str, weights: Any) -> Any:
    """Turn a weights spec into a torchvision ``WeightsEnum`` member (or ``None``).

    Args:
        name: torchvision builder name, e.g. ``"resnet18"``.
        weights: ``None``, an enum member, a member name (``"IMAGENET1K_V1"``,
            ``"DEFAULT"``) or a full ``"ResNet18_Weights.IMAGENET1K_V1"`` string.

    Raises:
        ValueError: If the name does not match any weights of that model.
    """
    if weights is None:
        return None
    from torchvision.models import get_model_weights

    enum_cls = get_model_weights(name)
    if isinstance(weights, enum_cls):
        return weights
    if isinstance(weights, str):
        member = (
            weights.split(".", 1)[1] if weights.startswith(enum_cls.__name__ + ".") else weights
        )
        try:
            return enum_cls[member]
        except KeyError:
            pass
    available = ", ".join(["DEFAULT", *(m.name for m in enum_cls)])
    raise InputError(f"Unknown weights {weights!r} for {name!r}. Available: {available}")


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """Replace the last ``nn.Linear`` of ``model`` by a fresh one with ``num_classes`` outputs."""
    last_name = None
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name = mod_name
    if last_name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    parent_name, _, attr = last_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def build_torchvision_model(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build torchvision model ``name``.

    Args:
        name: torchvision builder name (one of :data:`TORCHVISION_MODELS`).
        num_classes: Classifier outputs.
        in_channels: Must be 3.
        weights: See :func:`resolve_weights`; ``None`` for random init.
        **kwargs: Forwarded to the torchvision builder.

    Returns:
        Model mapping ``(B, 3, H, W)`` to logits ``(B, num_classes)``.

    Raises:
        ValueError: On ``in_channels != 3`` or unknown weights.
    """
    if in_channels != 3:
        raise ValueError(
            f"torchvision model {name!r} only supports in_channels=3 (got {in_channels}); "
            "use a CIFAR zoo model or convert inputs to 3 channels"
        )
    from torchvision.models import get_model

    weights_enum = resolve_weights(name, weights)
    if weights_enum is None:
        return get_model(name, weights=None, num_classes=num_classes, **kwargs)
    n_pretrained = len(weights_enum.meta["categories"])
    model = get_model(name, weights=weights_enum, **kwargs)
    if num_classes != n_pretrained:
        _replace_last_linear(model, num_classes)
    return model


def _make_factory(tv_name: str):
    def factory(num_classes: int = 100, in_channels: int = 3, weights: Any = None, **kwargs):
        return build_torchvision_model(
            tv_name, num_classes=num_classes, in_channels=in_channels, weights=weights, **kwargs
        )

    factory.__name__ = tv_name
    factory.__doc__ = f"torchvision ``{tv_name}`` (see :func:`build_torchvision_model`)."
    return factory


for _name in TORCHVISION_MODELS:
    register_model(_name)(_make_factory(_name))
