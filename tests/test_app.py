"""The Hydra application: configs compose, cskd-train and cskd-eval run for real on digits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from app_helpers import FAST, compose_train, read_summary, run_cli
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from cskd_lightning.app.jobs import instantiate_group
from cskd_lightning.app.train import train
from cskd_lightning.losses import DistillationLoss

CONF = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("distill", group_options("distill"))
def test_every_distill_config_builds_a_loss(distill: str, tmp_path: Path) -> None:
    cfg = compose_train([f"distill={distill}"], tmp_path)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    assert isinstance(loss, DistillationLoss)
    assert cfg.distill.name == distill


@pytest.mark.parametrize("data", group_options("data"))
def test_every_data_config_builds_a_datamodule(data: str, tmp_path: Path) -> None:
    cfg = compose_train([f"data={data}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    assert isinstance(datamodule, L.LightningDataModule)
    assert datamodule.num_classes == cfg.data.num_classes
    assert datamodule.in_channels == cfg.data.in_channels


@pytest.mark.parametrize("pair", group_options("pair"))
def test_every_pair_config_builds_both_models(pair: str, tmp_path: Path) -> None:
    data = {
        "digits": "digits",
        "fashion_mnist": "fashion_mnist",
        "fashion_mnist_pairs": "fashion_mnist_pairs",
    }.get(pair)
    if data is None:
        data = "imagenet" if pair.startswith("imagenet") else "cifar100"
    overrides = [f"pair={pair}", f"data={data}"]
    if data == "imagenet":  # never download pretrained weights in tests
        overrides.append("pair.teacher.model.weights=null")
    cfg = compose_train(overrides, tmp_path)
    for role in ("teacher", "student"):
        model = hydra.utils.instantiate(cfg.pair[role].model)
        assert sum(p.numel() for p in model.parameters()) > 0
        assert cfg.pair[role].recipe.max_epochs > 0
        if cfg.pair[role].recipe.get("optimizer"):
            optimizer = hydra.utils.instantiate(cfg.pair[role].recipe.optimizer)
            assert isinstance(optimizer(model.parameters()), torch.optim.Optimizer)


@pytest.mark.parametrize("trainer", group_options("trainer"))
def test_every_trainer_config_composes(trainer: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert cfg.trainer.max_epochs == cfg.pair.student.recipe.max_epochs
    if cfg.trainer.accelerator == "cpu":
        assert isinstance(hydra.utils.instantiate(cfg.trainer), L.Trainer)


# The pair an experiment that asks for one (pair: ???) is composed with, by dataset.
EXPERIMENT_PAIRS = {"cifar100": "resnet32x4_resnet8x4", "imagenet": "imagenet_resnet34_resnet18"}


def compose_option(group: str, option: str, tmp_path: Path):
    """``group=option`` composed; an experiment that needs a pair gets one of its dataset."""
    overrides = [f"{group}={option}"]
    if group == "experiment" and option.split("_")[0] in EXPERIMENT_PAIRS:
        overrides.append(f"pair={EXPERIMENT_PAIRS[option.split('_')[0]]}")
    return compose_train(overrides, tmp_path)


@pytest.mark.parametrize(
    "group", ["callbacks", "logger", "experiment", "hparams_search", "debug", "module"]
)
def test_other_groups_compose(group: str, tmp_path: Path) -> None:
    from cskd_lightning.callbacks import TemperatureMonitor
    from cskd_lightning.checkpoint_io import RunModelCheckpoint
    from cskd_lightning.loggers import RunCSVLogger
    from cskd_lightning.module import DistillationModule

    default_kinds = {type(c) for c in instantiate_group(compose_train([], tmp_path).callbacks)}
    assert RunModelCheckpoint in default_kinds  # the best epoch, which cskd-train tests
    for option in group_options(group):
        cfg = compose_option(group, option, tmp_path)
        # Every interpolation resolves, and the trainer runs the student's recipe.
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert (
            resolved["trainer"]["max_epochs"] == resolved["pair"]["student"]["recipe"]["max_epochs"]
        )
        kinds = {type(c) for c in instantiate_group(cfg.get("callbacks"))}
        if group == "callbacks":  # monitor = default + the monitor; none = nothing at all
            expected = {"default": set(), "monitor": {TemperatureMonitor}}.get(option)
            assert kinds == (set() if expected is None else default_kinds | expected), option
        # The CSV log is always written (metrics.csv, the summary's history).
        assert hydra.utils.get_class(cfg.logger.csv._target_) is RunCSVLogger, option
        assert issubclass(hydra.utils.get_class(cfg.module._target_), DistillationModule)
        if group == "debug":  # a debug run is a quick, reproducible CPU run apart from real ones
            assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu", option
            assert cfg.trainer.deterministic and cfg.trainer.detect_anomaly, option


def test_train_on_digits_writes_every_output_and_reuses_the_teacher(tmp_path: Path) -> None:
    cfg = compose_train(FAST, tmp_path)
    metrics = train(cfg)
    run = tmp_path / "run"
    summary = read_summary(run)
    assert summary["method"] == "cskd_cswt" and summary["seed"] == 0
    for role in ("teacher", "student"):
        assert 0.0 <= summary[role]["test_acc"] <= 1.0
    assert summary["teacher"]["test_acc"] > 0.3, "8 real steps on digits beat chance (0.1)"
    assert summary["teacher"]["cached"] is False
    assert 0.0 <= summary["student"]["val_acc_best"] <= 1.0
    for name in ("metrics.csv", "student.pt", "config.yaml", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert metrics["test/acc"] == pytest.approx(summary["student"]["test_acc"])
    assert 0.0 <= metrics[cfg.optimized_metric] <= 1.0  # what a sweeper reads is there
    assert "train/cs_cswt" in (run / "metrics.csv").read_text().splitlines()[0]

    cached = list((tmp_path / "cache" / "teachers").glob("*.pt"))
    assert len(cached) == 1
    again = compose_train([*FAST, "distill=kd"], tmp_path / "second")
    again.paths.cache_dir = str(tmp_path / "cache")
    train(again)
    second = read_summary(tmp_path / "second" / "run")
    assert second["teacher"]["cached"] is True
    assert second["teacher"]["source"] == str(cached[0])
    assert second["teacher"]["test_acc"] == pytest.approx(summary["teacher"]["test_acc"])


def test_teacher_cache_key_changes_with_what_determines_the_teacher(tmp_path: Path) -> None:
    from cskd_lightning.app.teacher_stage import teacher_cache_key

    base = teacher_cache_key(compose_train([], tmp_path))
    assert base == teacher_cache_key(compose_train(["+data.datamodule.num_workers=3"], tmp_path))
    assert base == teacher_cache_key(compose_train(["distill=kd"], tmp_path))
    assert base == teacher_cache_key(compose_train(["data.datamodule.two_view=true"], tmp_path))
    # A fixed teacher seed shares one teacher across student seeds.
    assert base == teacher_cache_key(compose_train(["seed=1", "teacher.seed=0"], tmp_path))
    for override in ("seed=1", "pair.teacher.recipe.max_epochs=3", "data.datamodule.batch_size=32"):
        assert base != teacher_cache_key(compose_train([override], tmp_path)), override


def test_cli_train_then_eval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(
        ["cskd-train", *FAST, f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "student" in done.stdout and "teacher" in done.stdout
    assert (run / ".hydra" / "config.yaml").is_file()
    trained = read_summary(run)["student"]["test_acc"]

    evaluated = run_cli(["cskd-eval", f"run_dir={run}"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(trained, abs=1e-6)


def test_multirun_records_a_failing_job_runs_the_others_and_exits_1(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    common = [
        "cskd-train",
        "-m",
        *FAST,
        "distill=cskd",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    done = run_cli([*common, "distill.loss.temperature=4.0,-1.0"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert read_summary(sweep / "0")["method"] == "cskd"
    error = (sweep / "1" / "error.txt").read_text()
    assert "temperature must be a positive number" in error
    assert not (sweep / "1" / "summary.json").exists()
    output = done.stdout + done.stderr
    assert "1 job(s) of the multirun failed" in output and f"{sweep / '1'}:" in output
    first = (sweep / "0" / "summary.json").read_bytes()

    # The same sweep directory again, the bad value fixed: job 0 is finished (reported, not
    # redone), job 1 now runs; no failure of the earlier attempt is reported.
    again = run_cli([*common, "distill.loss.temperature=4.0,3.0"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "failed" not in again.stdout + again.stderr
    assert (sweep / "0" / "summary.json").read_bytes() == first
    assert "holds this run, finished" in (sweep / "0" / "train.log").read_text()
    assert read_summary(sweep / "1")["overrides"][-1] == "distill.loss.temperature=3.0"
    assert not (sweep / "1" / "error.txt").exists()
    assert (
        "temperature must be a positive number" in (sweep / "1" / "error.previous.txt").read_text()
    )


def test_unknown_group_option_lists_the_choices(tmp_path: Path) -> None:
    done = run_cli(["cskd-train", "distill=nope"], cwd=tmp_path)
    assert done.returncode != 0
    assert "Could not find 'distill/nope'" in done.stderr
    assert "cskd_cswt" in done.stderr  # the available options are listed


def test_missing_teacher_checkpoint_fails_before_training(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "teacher.ckpt"
    done = run_cli(
        ["cskd-train", f"teacher.ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert f"Checkpoint not found: {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_teacher_checkpoint_for_another_model_lists_mismatched_keys(tmp_path: Path) -> None:
    from cskd_lightning.models import create_model

    wrong = tmp_path / "wrong.pth"
    torch.save({"model": create_model("digits_student", 10, 1).state_dict()}, wrong)
    cfg = compose_train([*FAST, f"teacher.ckpt_path={wrong}"], tmp_path)
    with pytest.raises(ValueError, match=r"do not fit") as err:
        train(cfg)
    assert "shape" in str(err.value) or "missing keys" in str(err.value)


@pytest.mark.parametrize("layout", ["zoo", "state_dict", "lightning"])
def test_teacher_checkpoint_formats(layout: str, tmp_path: Path) -> None:
    from cskd_lightning.models import create_model

    teacher = create_model("digits_teacher", 10, 1)
    path = tmp_path / "teacher.pth"
    state = teacher.state_dict()
    payload = {
        "zoo": {"model": state, "epoch": 240},
        "state_dict": state,
        "lightning": {"state_dict": {f"student.{k}": v for k, v in state.items()}},
    }[layout]
    torch.save(payload, path)
    cfg = compose_train([*FAST, f"teacher.ckpt_path={path}", "train=false"], tmp_path)
    train(cfg)
    summary = read_summary(tmp_path / "run")
    assert summary["teacher"]["source"] == str(path.resolve())


def test_non_editable_install_finds_its_configs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import cskd_lightning, importlib.resources as r;"
        "from hydra import compose, initialize_config_module;"
        "initialize_config_module(config_module='cskd_lightning.conf', version_base='1.3');"
        "cfg = compose(config_name='train', overrides=['distill=kd']);"
        "print(cskd_lightning.__file__); print(cfg.distill.loss._target_)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(target) in done.stdout
    assert "cskd_lightning.losses.KDLoss" in done.stdout


def test_train_yaml_defaults(tmp_path: Path) -> None:
    """The README's default run: CSKD + CSWT on the bundled digits, on the CPU, with a fresh
    teacher; the sweeper's metric is one the module logs (tested in the digits run above)."""
    from cskd_lightning.data import DigitsDataModule
    from cskd_lightning.losses import CSKDLoss
    from cskd_lightning.module import DistillationModule

    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="train")
    assert isinstance(hydra.utils.instantiate(cfg.data.datamodule), DigitsDataModule)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    assert isinstance(loss, CSKDLoss) and loss.cswt
    assert hydra.utils.get_class(cfg.module._target_) is DistillationModule
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.teacher.ckpt_path is None


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("maximize", float("-inf")), ("minimize", float("inf")), (["maximize"], float("-inf"))],
)
def test_a_failed_sweep_job_returns_the_worst_value(
    direction, expected, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra.core.hydra_config import HydraConfig

    from cskd_lightning.app.jobs import failed_job_value

    hydra_cfg = OmegaConf.create({"sweeper": {"direction": direction}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    assert failed_job_value() == expected
    hydra_cfg = OmegaConf.create({"sweeper": {}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    assert math.isnan(failed_job_value())  # a plain grid sweep
