"""Distillation driven by LightningCLI and a YAML (``config.yaml`` beside this file).

    python make_teacher.py
    python distill.py fit --config config.yaml
    python distill.py fit --config config.yaml --lr_scheduler StepLR --lr_scheduler.step_size 5

``DistillationCLI`` is ``LightningCLI`` with Lightning's own ``--optimizer`` /
``--lr_scheduler`` handed to the module, so that they act on the student's parameters; plain
``LightningCLI(DistillationModule, DigitsDataModule)`` works too with ``model.optimizer`` /
``model.scheduler`` as in the YAML. Needs ``pip install "cskd-lightning[cli]"``.
"""

from __future__ import annotations

from cskd_lightning import DistillationModule
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.lightning_cli import DistillationCLI


def main(args: list[str] | None = None) -> DistillationCLI:
    return DistillationCLI(DistillationModule, DigitsDataModule, args=args)


if __name__ == "__main__":
    main()
