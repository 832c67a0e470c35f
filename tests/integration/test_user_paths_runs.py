"""The paths a Lightning user takes outside cskd-train's defaults, through the real console
scripts: ``--help``, the optional loggers, their own data (``--config-dir``), ``cskd-eval``."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from app_helpers import FAST, read_summary, run_cli
from helpers import REPO

TEMPLATE = REPO / "examples" / "own_data" / "conf" / "data" / "my_data.yaml"


def test_help_says_what_the_program_does(tmp_path: Path) -> None:
    done = run_cli(["cskd-train", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    page = done.stdout
    assert "distil a small student network from a frozen teacher" in page
    assert "Powered by Hydra" in page and "== Examples ==" in page
    for group in ("data=", "pair=", "distill=", "trainer=", "logger=", "module=", "debug="):
        assert group in page
    # The five example commands: a run, a sweep, Optuna, a resume, own data.
    examples = page.split("== Examples ==")[1].split("==")[0]
    commands = [
        line.split("#")[0].strip() for line in examples.splitlines() if "cskd-train" in line
    ]
    assert len(commands) == 5
    assert any(" -m " in c and "seed=" in c for c in commands)  # a sweep
    assert any("hparams_search=optuna" in c for c in commands)
    assert any("ckpt_path=last" in c and "hydra.run.dir=" in c for c in commands)
    assert any("--config-dir" in c for c in commands)
    # Where outputs go, and every option of the real config groups (listed by Hydra itself).
    assert "outputs/train/runs/<time>/" in page and "summary.json" in page
    options = ("wandb", "mlflow", "tensorboard", "cskd_cswt", "fashion_mnist_pairs", "overfit")
    for option in options:
        assert option in page.split("== All config groups ==")[1]


@pytest.mark.long
def test_the_optional_loggers_log_the_run_and_its_config(tmp_path: Path) -> None:
    """TensorBoard, W&B (offline: no key here) and MLflow (a local file store) in one run."""
    run = tmp_path / "run"
    done = run_cli(
        [
            "cskd-train",
            *FAST,
            "logger=[tensorboard,wandb,mlflow]",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
        WANDB_API_KEY="",
        WANDB_MODE="",
        WANDB_SILENT="true",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The CSV log's hparams.yaml holds the resolved config, not {}.
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["distill"]["name"] == "cskd_cswt" and hparams["seed"] == 0
    assert hparams["pair"]["student"]["recipe"]["max_epochs"] == 3  # FAST's override, resolved
    # TensorBoard: event files and its hparams.yaml.
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text())["seed"] == 0
    # W&B: an offline run under the run directory, holding the config and the metrics.
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1, list((run / "wandb").glob("*"))
    record = offline[0].read_bytes()
    assert b"optimized_metric" in record and b"val/acc_best" in record
    # MLflow: a file store under the run directory with the params and the metrics.
    runs = [p for p in (run / "mlruns").glob("*/*") if (p / "params").is_dir()]
    assert len(runs) == 1
    assert (runs[0] / "params" / "distill" / "name").read_text() == "cskd_cswt"
    assert (runs[0] / "metrics" / "val" / "acc_best").is_file()


def test_your_own_data_as_the_readme_says_and_cskd_eval_in_percent(tmp_path: Path) -> None:
    _write_user_project(tmp_path)
    run = tmp_path / "run"
    common = {"PYTHONPATH": "."}
    done = run_cli(
        [
            "cskd-train",
            "--config-dir",
            "my_conf",
            "data=shapes",
            *FAST,
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        tmp_path,
        **common,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_summary(run)
    assert summary["data"] == "shapes"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["datamodule"] == {
        "_target_": "userpkg.shapes.ShapesDataModule",
        "batch_size": 64,
    }
    assert summary["student"]["test_acc"] is not None and summary["teacher"]["test_acc"] > 0.5

    # Without PYTHONPATH=. the user's datamodule cannot be imported: one line naming the fix
    # (started elsewhere: `python -m`, which the tests run, would import from its own cwd).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = run_cli(["cskd-eval", f"run_dir={run}"], elsewhere)
    assert lost.returncode == 1 and "Traceback" not in lost.stderr, lost.stderr[-3000:]
    errors = [line for line in lost.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "PYTHONPATH=. in front" in errors[0], lost.stderr[-3000:]

    # cskd-eval rebuilds the user's data from the run's config and prints percentages.
    evaluated = run_cli(["cskd-eval", f"run_dir={run}"], tmp_path, **common)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    shown = f"{100 * summary['student']['test_acc']:.2f}%"
    assert re.search(r"test acc\s*│\s*" + re.escape(shown), evaluated.stdout), evaluated.stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(summary["student"]["test_acc"])
    # The same log format as cskd-train's train.log.
    for log_file in (run / "train.log", run / "eval" / "eval.log"):
        lines = log_file.read_text().splitlines()
        assert lines and all(LOG_LINE.match(line) for line in lines if line[:1] == "["), lines


LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\]\[(INFO|WARNING|ERROR|DEBUG)\] ")


def _write_user_project(root: Path) -> None:
    """A package of the user's own (not installed; found through PYTHONPATH=.) and a config
    directory made from the README's template."""
    package = root / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shapes.py").write_text(
        textwrap.dedent(
            '''
            import lightning as L
            import torch
            from torch.utils.data import DataLoader, TensorDataset


            class ShapesDataModule(L.LightningDataModule):
                """3 classes: a bright row, column or diagonal in 10x10 noise. Takes no
                val_split, two_view or seed: any key of the bundled datasets would fail."""

                def __init__(self, batch_size: int, size: int = 10) -> None:
                    super().__init__()
                    self.batch_size, self.size = batch_size, size

                def setup(self, stage=None):
                    g = torch.Generator().manual_seed(1)
                    y = torch.randint(0, 3, (900,), generator=g)
                    x = 0.5 * torch.randn(900, 1, self.size, self.size, generator=g)
                    x[y == 0, 0, 4, :] += 2.0
                    x[y == 1, 0, :, 4] += 2.0
                    idx = torch.arange(self.size)
                    x[(y == 2).nonzero()[:, 0][:, None], 0, idx, idx] += 2.0
                    self.sets = [TensorDataset(x[a:b], y[a:b]) for a, b in
                                 ((0, 600), (600, 750), (750, 900))]

                def train_dataloader(self):
                    return DataLoader(self.sets[0], batch_size=self.batch_size, shuffle=True)

                def val_dataloader(self):
                    return DataLoader(self.sets[1], batch_size=150)

                def test_dataloader(self):
                    return DataLoader(self.sets[2], batch_size=150)
            '''
        )
    )
    config = yaml.safe_load(TEMPLATE.read_text())
    config["name"], config["num_classes"], config["in_channels"] = "shapes", 3, 1
    config["datamodule"] = {
        "_target_": "userpkg.shapes.ShapesDataModule",
        "batch_size": config["datamodule"]["batch_size"],
    }
    (root / "my_conf" / "data").mkdir(parents=True)
    (root / "my_conf" / "data" / "shapes.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.long
def test_a_run_from_another_directory_reuses_the_teacher_of_the_per_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default teacher cache is the user's (platformdirs: ``$XDG_CACHE_HOME/cskd-lightning``
    on Linux), not the current directory's: a second ``cskd-train`` started elsewhere reuses
    the teacher the first trained, and the log says where the cache is."""
    monkeypatch.delenv("CSKD_CACHE_DIR")  # the default, under the tests' own XDG_CACHE_HOME
    xdg = tmp_path / "xdg"
    teachers = xdg / "cskd-lightning" / "teachers"
    first, second = tmp_path / "project_a", tmp_path / "elsewhere" / "b"
    for cwd in (first, second):
        cwd.mkdir(parents=True)
    done = run_cli(["cskd-train", *FAST], first, XDG_CACHE_HOME=str(xdg), OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    cached = sorted(teachers.glob("*.pt"))
    assert len(cached) == 1, list(xdg.rglob("*"))
    assert f"teacher cache {teachers}" in done.stdout + done.stderr
    before = cached[0].read_bytes()

    again = run_cli(["cskd-train", *FAST], second, XDG_CACHE_HOME=str(xdg), OMP_NUM_THREADS="1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Reusing the cached teacher {cached[0]}" in again.stdout + again.stderr
    assert "training one" not in again.stdout + again.stderr
    assert sorted(teachers.glob("*.pt")) == cached and cached[0].read_bytes() == before
    assert not (second / ".cache").exists() and not (first / ".cache").exists()
    runs = sorted(second.glob("outputs/train/runs/*/summary.json"))
    assert len(runs) == 1
    summary = json.loads(runs[0].read_text())
    assert summary["teacher"]["cached"] is True and summary["teacher"]["source"] == str(cached[0])
    assert summary["environment"]["threads"] == 1
    assert summary["teacher"]["environment"]["threads"] == 1


def test_a_run_that_fails_its_checks_leaves_no_empty_run_directory(tmp_path: Path) -> None:
    """CIFAR-100 without its files: one Error line, and the run directory Hydra made for it
    (and its new parents) removed again; a directory that was there before stays."""
    (tmp_path / "outputs" / "mine").mkdir(parents=True)
    done = run_cli(
        ["cskd-train", "data=cifar100", "pair=resnet56_resnet20", "trainer=cpu"],
        tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 1 and "CIFAR data not found" in done.stderr, done.stderr[-3000:]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outputs",
        "outputs/mine",
    ]
