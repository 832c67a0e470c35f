"""One call from two models and a datamodule to a distilled student: :func:`distill`.

For code that wants neither Hydra nor a LightningModule: it builds the same
:class:`~cskd_lightning.DistillationModule` and loss that ``cskd-train distill=<method>`` does
and runs a Lightning ``Trainer`` on them; :func:`train_teacher` trains the teacher first::

    teacher, _ = train_teacher(teacher, datamodule, max_epochs=10)
    student, metrics = distill(student, teacher, datamodule, method="cskd_cswt", max_epochs=20)

The method names are those of ``cskd-train``'s ``distill`` group, with the same loss settings
(:func:`methods`, read from the configs).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import nn

from cskd_lightning.dotted_path import import_object
from cskd_lightning.errors import InputError
from cskd_lightning.losses import DistillationLoss
from cskd_lightning.module import DistillationModule
from cskd_lightning.module_options import OptimizerFactory, SchedulerFactory

__all__ = ["distill", "make_loss", "method_names", "methods", "train_teacher"]


def _distill_configs() -> Any:
    """The folder of ``cskd-train``'s ``distill`` group, shipped in the package."""
    from importlib.resources import files

    return files("cskd_lightning.conf") / "distill"


def method_names() -> list[str]:
    """Every method, sorted: the ``conf/distill/<method>.yaml`` files."""
    names = (p.name for p in _distill_configs().iterdir())
    return sorted(n.removesuffix(".yaml") for n in names if n.endswith(".yaml"))


def _method_config(method: str) -> Any:
    """``conf/distill/<method>.yaml`` with its ``defaults`` (the ``*_ls`` variants inherit from
    their base), merged as Hydra composes the group."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create((_distill_configs() / f"{method}.yaml").read_text())
    bases = [d for d in cfg.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*[_method_config(base) for base in bases], cfg)


@functools.cache
def methods() -> dict[str, tuple[type[DistillationLoss], dict[str, Any]]]:
    """``method -> (loss class, its arguments)``, read from the ``loss`` of each
    ``conf/distill/<method>.yaml``: the configs are the one table of methods, for ``cskd-train
    distill=<method>`` and :func:`distill` alike. A value a config takes from the pair
    (``${oc.select:pair.dkd.beta,8.0}``) is its default here.

    ``cskd_full`` and ``mlkd`` need two views per image (a datamodule with ``two_view=True``);
    ``fitnet``, ``at``, ``rkd``, ``pkt``, ``sp``, ``crd`` and ``reviewkd`` need the models'
    feature layers (``features=``). ``dkd`` and ``dkd_ls`` carry mdistiller's defaults (beta 8):
    ``cskd-train`` takes a published pair's own DKD values from its pair config (``pair.dkd``);
    here pass them, e.g. ``make_loss("dkd", beta=6.0)`` for vgg13 -> vgg8."""
    from omegaconf import OmegaConf

    table: dict[str, tuple[type[DistillationLoss], dict[str, Any]]] = {}
    for method in method_names():
        loss = OmegaConf.to_container(_method_config(method).loss, resolve=True)
        assert isinstance(loss, dict)
        table[method] = (import_object(str(loss.pop("_target_"))), loss)
    return table


def make_loss(method: str, **overrides: Any) -> DistillationLoss:
    """The loss of ``method`` (a :func:`methods` name) with its settings, ``overrides`` on top
    (e.g. ``make_loss("cskd_cswt", t_high=8.0)``)."""
    table = methods()
    if method not in table:
        raise InputError(
            f"Unknown method {method!r}. Available: {', '.join(sorted(table))}.", key="method"
        )
    cls, kwargs = table[method]
    return cls(**{**kwargs, **overrides})


_TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    datamodule: L.LightningDataModule,
    method: str = "cskd_cswt",
    max_epochs: int = 10,
    *,
    loss_kwargs: Mapping[str, Any] | None = None,
    features: Mapping[str, Any] | None = None,
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    test: bool = True,
    **trainer_kwargs: Any,
) -> tuple[nn.Module, dict[str, float]]:
    """Distil ``teacher`` into ``student`` on ``datamodule``; return ``(student, metrics)``.

    Args:
        student: the model to train (trained in place); returns logits ``(B, C)``.
        teacher: the trained teacher (frozen during training), or ``None`` for ``method="ce"``.
        datamodule: a ``LightningDataModule`` yielding ``(x, y)`` batches (``((x_weak,
            x_strong), y)`` for the two-view methods) with a validation loader, and a test
            loader when ``test``.
        method: a :func:`methods` name (``cskd-train``'s ``distill=`` options).
        max_epochs: training epochs.
        loss_kwargs: overrides of the method's loss settings (e.g. ``{"temperature": 2.0}``).
        features: for a feature method, the layers of each feature role, ``{"student": {role:
            [layer, ...]}, "teacher": {...}}`` (as :class:`~cskd_lightning.DistillationModule`
            takes them; the CIFAR-100 pair configs' ``features`` blocks are examples).
        optimizer, scheduler: as :class:`~cskd_lightning.DistillationModule` takes them
            (default SGD lr 0.05, momentum 0.9, weight decay 5e-4; no scheduler).
        test: test the final student on ``datamodule``'s test loader.
        **trainer_kwargs: ``lightning.Trainer`` arguments (``accelerator``, ``devices``,
            ``precision``, ``limit_train_batches``, ``callbacks``, ``logger``, ...); this
            function's defaults are no logger, no checkpoints and no model summary.

    Returns:
        The trained student in eval mode, and its metrics: every value Lightning logged at the
        end (``val/acc``, ``val/acc_best``, ``train/loss``, ``train/<term>``, ...) and, with
        ``test``, ``test/acc`` and ``test/acc_top5``, as floats.
    """
    loss = make_loss(method, **dict(loss_kwargs or {}))
    module = DistillationModule(
        student,
        teacher if loss.requires_teacher else None,
        loss,
        optimizer=optimizer,
        scheduler=scheduler,
        features=features,
    )
    trainer = L.Trainer(max_epochs=max_epochs, **{**_TRAINER_DEFAULTS, **trainer_kwargs})
    with warnings.catch_warnings():
        # A small datamodule with num_workers=0 is the common case here.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if test:
            results = trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    return module.student.eval(), metrics


def train_teacher(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    max_epochs: int = 10,
    *,
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    test: bool = True,
    **trainer_kwargs: Any,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` on the labels alone (cross-entropy, ``L = CE(z, y)``), as a teacher for
    :func:`distill`; return ``(model, metrics)``.

    It is ``distill(model, None, datamodule, method="ce", ...)``: the same module, optimizer
    default (SGD lr 0.05, momentum 0.9, weight decay 5e-4) and ``Trainer`` arguments. The model
    comes back trained, in eval mode; ``metrics`` holds ``val/acc``, ``val/acc_best`` and, with
    ``test``, ``test/acc``. To reuse a teacher across runs, save its ``state_dict`` (or use
    ``cskd-train``, which caches it).
    """
    return distill(
        model,
        None,
        datamodule,
        method="ce",
        max_epochs=max_epochs,
        optimizer=optimizer,
        scheduler=scheduler,
        test=test,
        **trainer_kwargs,
    )
