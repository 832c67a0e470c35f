"""LightningCLI for distillation: Lightning's ``--optimizer`` / ``--lr_scheduler`` go to the
student.

``LightningCLI(DistillationModule, MyDataModule)`` works as it is: give the optimizer and the
scheduler as the module's own arguments (``model.optimizer`` / ``model.scheduler``, a
``class_path`` with ``init_args``; they only ever see the student's parameters). Lightning's
top-level ``--optimizer`` replaces the module's ``configure_optimizers`` with one over *all*
parameters, and a ``--lr_scheduler`` without ``--optimizer`` is dropped by Lightning:
:func:`refuse_dropped_lr_scheduler` refuses that case with one clear message (the module calls
it in its ``setup`` when LightningCLI is imported, so plain ``LightningCLI`` gets it too).

:class:`DistillationCLI` makes both top-level options work: before the classes are built it
moves ``optimizer`` into ``model.optimizer`` and ``lr_scheduler`` into ``model.scheduler``, so
the module's ``configure_optimizers`` builds them over the student's parameters (a scheduler
alone runs on the module's default optimizer, or on ``model.optimizer``). The saved
``config.yaml`` records them where they were used. Needs ``pip install
"cskd-lightning[cli]"`` (``jsonargparse[signatures]``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from cskd_lightning.errors import InputError

MOVED = (("optimizer", "optimizer"), ("lr_scheduler", "scheduler"))
"""LightningCLI's top-level key -> the :class:`~cskd_lightning.DistillationModule` argument."""


def hand_optimizers_to_module(config: Any) -> None:
    """In a parsed LightningCLI config (one subcommand's ``Namespace``), move ``optimizer`` and
    ``lr_scheduler`` into ``model.optimizer`` / ``model.scheduler``; both places set is an
    :class:`InputError`."""
    model = config.get("model")
    if model is None:
        return
    for top, own in MOVED:
        value = config.get(top)
        if value is None:
            continue
        if model.get(own) is not None:
            raise InputError(
                f"Both --{top} and --model.{own} are set: give the {own} once (either works "
                "with DistillationCLI)."
            )
        model[own] = value
        config[top] = None


def refuse_dropped_lr_scheduler(trainer: Any) -> None:
    """LightningCLI's own ``--lr_scheduler`` without ``--optimizer`` is dropped by Lightning
    (it only replaces ``configure_optimizers`` when an optimizer is given): refuse it. The
    config is read from the trainer's ``SaveConfigCallback``; nothing without one."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if not isinstance(callback, SaveConfigCallback):
            continue
        config = getattr(callback, "config", None)
        if config is not None and config.get("lr_scheduler") is not None:
            raise InputError(
                "LightningCLI's --lr_scheduler was given without --optimizer, and Lightning "
                "ignores it then. Give the module's own scheduler instead "
                "(--model.scheduler=<class> --model.scheduler.<arg>=..., or model.scheduler in the "
                "YAML), or use cskd_lightning.lightning_cli.DistillationCLI, which hands "
                "--optimizer and --lr_scheduler to the module."
            )


class DistillationCLI(LightningCLI):
    """``LightningCLI`` whose ``--optimizer`` / ``--lr_scheduler`` become the module's
    ``optimizer`` / ``scheduler`` (see the module docstring). Use it as LightningCLI::

        DistillationCLI(DistillationModule, DigitsDataModule)
    """

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        hand_optimizers_to_module(config)
