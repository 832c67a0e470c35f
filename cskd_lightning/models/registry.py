"""Name registry for the model zoo.

Every architecture registers a factory under a unique, case-sensitive name with
:func:`register_model`.  A factory is called as
``factory(num_classes=..., in_channels=..., **kwargs)`` and returns an
``nn.Module`` whose ``forward(x)`` returns logits of shape ``(B, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from cskd_lightning.errors import InputError

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Class/function decorator that registers a model factory under ``name``.

    Args:
        name: Unique, case-sensitive model name (e.g. ``"resnet8x4"``).

    Returns:
        A decorator returning the factory unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Return the sorted list of all registered model names."""
    return sorted(_REGISTRY)


def get_model_factory(name: str) -> ModelFactory:
    """Return the factory registered under ``name``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the available names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        available = ", ".join(list_models())
        raise InputError(f"Unknown model {name!r}. Available: {available}") from None


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registered model name, see :func:`list_models`.
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images (first convolution's input).
        **kwargs: Extra architecture-specific options forwarded to the factory
            (e.g. ``weights="IMAGENET1K_V1"`` for the torchvision models).

    Returns:
        An ``nn.Module`` mapping ``(B, in_channels, H, W)`` images to logits
        ``(B, num_classes)``.

    Raises:
        ValueError: If ``name`` is unknown (message lists the available names).
    """
    factory = get_model_factory(name)
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (buffers such as BN statistics excluded).

    Args:
        model: The module.
        trainable_only: Count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
