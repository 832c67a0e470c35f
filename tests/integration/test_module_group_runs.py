"""The module group through the real command: README's subclass of DistillationModule trains in
every job of a multirun (``module._target_=<pkg>.<Class>``; what the group composes to and its
errors: tests/unit/test_module_group.py)."""

from __future__ import annotations

import csv
from pathlib import Path

from app_helpers import FAST, read_summary, run_cli
from helpers import REPO


def readme_package() -> str:
    """The ``my_pkg/__init__.py`` of README's "Your own LightningModule", as written there."""
    text = (REPO / "README.md").read_text().split("### Your own LightningModule")[1]
    block = text.split("```python\n")[1].split("```")[0]
    assert block.startswith("# my_pkg/__init__.py")
    return block


def test_the_readme_subclass_trains_in_every_job_of_a_multirun(tmp_path: Path) -> None:
    """README's WarmupCSKD through the real command: only CE in the first epoch, then CSKD +
    CSWT, in both jobs of a 2-job multirun."""
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(readme_package())
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            "module._target_=my_pkg.WarmupCSKD",
            "seed=0,1",
            *FAST,
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        PYTHONPATH=".",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for job, seed in (("0", 0), ("1", 1)):
        assert read_summary(sweep / job)["seed"] == seed
        rows = list(csv.DictReader((sweep / job / "metrics.csv").open()))
        epochs = [r for r in rows if r.get("train/loss")]
        assert len(epochs) == 3  # FAST's student epochs
        loss = [float(r["train/loss"]) for r in epochs]
        ce = [float(r["train/ce"]) for r in epochs]
        assert loss[0] == ce[0]  # the subclass: CE alone in epoch 0
        assert all(total > plain for total, plain in zip(loss[1:], ce[1:], strict=True))  # + CSKD
