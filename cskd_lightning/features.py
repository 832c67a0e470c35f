"""Intermediate features taken by forward hooks on named submodules.

The zoo's models return logits only; a feature-distillation loss gets its features from hooks
on the submodules a pair's config names, so the models (and the checkpoints they load) stay
as they are. A *layer spec* is a submodule's dotted name (``"layer2"``, ``"layer3.4.preact"``,
as in ``model.named_modules()``): the hook records that submodule's output. With the suffix
``":input"`` (``"fc:input"``) it records the submodule's first positional input instead, e.g. the
pooled feature a classifier receives.

A *feature map* names, for each role a loss asks for (mdistiller's names: ``feats``, the stem
and stage outputs; ``preact_feats``, the same before the last ReLU; ``pooled_feat``, the pooled
feature before the classifier), the layer specs of one model, in order::

    {"feats": ["relu", "layer1", "layer2", "layer3"], "pooled_feat": ["fc:input"]}

:class:`FeatureHooks` records them only inside :meth:`FeatureHooks.capture`, so evaluation
forwards keep nothing. Beware in-place operations: a hook keeps a reference to the submodule's
output, and an in-place op applied to that tensor later in the forward changes what was
recorded (for the student autograd then raises; for the teacher, under ``no_grad``, the value
is silently the modified one). Name a submodule whose output is not modified in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cskd_lightning.errors import InputError

__all__ = ["FeatureHooks", "FeatureMap", "Features", "check_feature_map"]

INPUT_SUFFIX = ":input"

FeatureMap = Mapping[str, Sequence[str]]
"""``role -> layer specs`` of one model."""

Features = dict[str, list[Tensor]]
"""``role -> tensors``, one per layer spec, in the order the feature map names them."""


def check_feature_map(
    features: Any, roles: Sequence[str], model_role: str, where: str = "features"
) -> dict[str, list[str]]:
    """The ``roles`` of ``features`` (``role -> layer spec or list of them``) as lists of specs,
    or an :class:`InputError` naming the first missing role and where to add it."""
    features = {} if features is None else features
    if not isinstance(features, Mapping):
        raise InputError(
            f"{where}.{model_role} must map feature roles to layer names; got {features!r}."
        )
    out: dict[str, list[str]] = {}
    for role in roles:
        specs = features.get(role)
        if specs is None or (not isinstance(specs, str) and len(specs) == 0):
            raise InputError(
                f"The loss needs the {model_role}'s {role!r} features, but {where}.{model_role} "
                f"names no layer for {role!r}. Add it, e.g. {where}.{model_role}.{role}: "
                "[layer1, layer2] (submodule names of the model; 'fc:input' for a module's "
                "input)."
            )
        out[role] = [specs] if isinstance(specs, str) else [str(s) for s in specs]
    return out


class FeatureHooks:
    """Forward hooks on the submodules ``feature_map`` names, recording their outputs.

    Args:
        model: the model to hook (its structure is not changed).
        feature_map: ``role -> layer specs`` (see the module docstring).
        model_role: ``"student"`` or ``"teacher"``, for the error messages.

    The names are resolved (and a wrong one refused) at construction; the hooks exist only
    inside :meth:`capture`, so the model stays hook-free for evaluation, export and pickling::

        hooks = FeatureHooks(model, {"feats": ["layer1", "layer2"]})
        with hooks.capture() as feats:
            logits = model(x)
        feats["feats"]  # [layer1 output (B, C1, H1, W1), layer2 output (B, C2, H2, W2)]

    A layer named by several roles is hooked once; with several forwards inside one block the
    last one's features are kept. A layer that did not run is an :class:`InputError` at the end
    of the block.
    """

    def __init__(self, model: nn.Module, feature_map: FeatureMap, model_role: str = "model"):
        self.model_role = model_role
        self.feature_map = {role: list(specs) for role, specs in feature_map.items()}
        modules = dict(model.named_modules())
        self._targets: dict[str, tuple[nn.Module, bool]] = {}
        for spec in dict.fromkeys(s for specs in self.feature_map.values() for s in specs):
            name, wants_input = _split_spec(spec)
            module = modules.get(name)
            if module is None:
                close = sorted(n for n in modules if n and n.split(".")[0] == name.split(".")[0])
                hint = f" Submodules with that prefix: {', '.join(close[:8])}." if close else ""
                raise InputError(
                    f"The {model_role} ({type(model).__name__}) has no submodule {name!r} "
                    f"(feature layer {spec!r}).{hint} Name one of model.named_modules()."
                )
            self._targets[spec] = (module, wants_input)

    @contextmanager
    def capture(self) -> Iterator[Features]:
        """Record the hooked features of the forwards run inside the block; the yielded dict
        is filled (``role -> [tensor per spec]``) when the block ends."""
        records: dict[str, Tensor] = {}

        def hook(spec: str, wants_input: bool):
            def record(module: nn.Module, args: tuple, output: Any) -> None:
                value = args[0] if wants_input else output
                records[spec] = value[0] if isinstance(value, (tuple, list)) else value

            return record

        handles: list[RemovableHandle] = [
            module.register_forward_hook(hook(spec, wants_input))
            for spec, (module, wants_input) in self._targets.items()
        ]
        features: Features = {}
        try:
            yield features
        finally:
            for handle in handles:
                handle.remove()
        for role, specs in self.feature_map.items():
            missing = [s for s in specs if s not in records]
            if missing:
                raise InputError(
                    f"The {self.model_role}'s feature layer(s) {', '.join(missing)} ({role!r}) "
                    "did not run in its forward. Name submodules the forward calls."
                )
            features[role] = [records[s] for s in specs]


def _split_spec(spec: str) -> tuple[str, bool]:
    if spec.endswith(INPUT_SUFFIX):
        return spec[: -len(INPUT_SUFFIX)], True
    return spec, False
