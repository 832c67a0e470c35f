"""The Hydra application's configs: every option of every group composes and builds what it
names, the teacher cache key, teacher checkpoint formats, the sweep's failed-job value (the real
runs are in tests/integration/test_app_runs.py)."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from app_helpers import FAST, compose_app, compose_train, read_summary
from helpers import REPO
from omegaconf import OmegaConf

from cskd_lightning.app.jobs import instantiate_group
from cskd_lightning.app.train import train
from cskd_lightning.losses import DistillationLoss

CONF = REPO / "conf"


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


def test_teacher_cache_key_changes_with_what_determines_the_teacher(tmp_path: Path) -> None:
    from cskd_lightning.app.teacher_stage import teacher_cache_key

    base = teacher_cache_key(compose_train([], tmp_path))
    assert base == teacher_cache_key(compose_train(["+data.datamodule.num_workers=3"], tmp_path))
    assert base == teacher_cache_key(compose_train(["distill=kd"], tmp_path))
    assert base == teacher_cache_key(compose_train(["data.datamodule.two_view=true"], tmp_path))
    # A fixed teacher seed shares one teacher across student seeds.
    assert base == teacher_cache_key(compose_train(["seed=1", "teacher.seed=0"], tmp_path))
    changes = (
        "seed=1",
        "pair.teacher.recipe.max_epochs=3",
        "data.datamodule.batch_size=32",
        # A bf16 teacher is another teacher: a float32 run must not load it, nor the reverse.
        "trainer.precision=bf16-mixed",
        "trainer.precision=64-true",
    )
    for override in changes:
        assert base != teacher_cache_key(compose_train([override], tmp_path)), override


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


def test_train_yaml_defaults(tmp_path: Path) -> None:
    """The README's default run: CSKD + CSWT on the bundled digits, on the CPU, with a fresh
    teacher; the sweeper's metric is one the module logs (tested in the digits run above)."""
    from cskd_lightning.data import DigitsDataModule
    from cskd_lightning.losses import CSKDLoss
    from cskd_lightning.module import DistillationModule

    cfg = compose_app("train")
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


def test_trainer_ddp_gives_batchnorm_the_global_batch(tmp_path: Path) -> None:
    """N devices x B/N trains like one device x B only if every student's BatchNorm sees the
    global batch's statistics: ``trainer=ddp`` builds a DDP trainer whose layer sync turns the
    module's BatchNorm layers into SyncBatchNorm, and the converted student's weights load into
    the plain student (what ``student.pt`` and the exports rebuild). The sync itself is not run
    here: torch's SyncBatchNorm synchronises on GPUs only, so the 2-process gloo runs
    (``trainer=ddp_sim``) keep per-process statistics."""
    from lightning.pytorch.plugins import TorchSyncBatchNorm

    from cskd_lightning.losses import KDLoss
    from cskd_lightning.models import create_model
    from cskd_lightning.module import DistillationModule

    cfg = compose_train(["trainer=ddp"], tmp_path)
    on_cpu = dict(accelerator="cpu", devices=1, precision="32-true", logger=False)
    trainer = hydra.utils.instantiate(cfg.trainer, **on_cpu)
    layer_sync = trainer.strategy._layer_sync  # what Lightning applies to the module in setup
    assert isinstance(layer_sync, TorchSyncBatchNorm)
    student = create_model("resnet8x4", num_classes=100)
    teacher = create_model("resnet32x4", num_classes=100)
    plain_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    module = layer_sync.apply(DistillationModule(student, teacher, KDLoss()))
    synced = [m for m in module.student.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert plain_bn > 0 and len(synced) == plain_bn
    rebuilt = create_model("resnet8x4", num_classes=100)
    rebuilt.load_state_dict(module.student.state_dict(), strict=True)
    sim_cfg = compose_train(["trainer=ddp_sim"], tmp_path).trainer
    sim = hydra.utils.instantiate(sim_cfg, logger=False)
    assert sim.strategy._layer_sync is None


def test_the_sweep_check_knows_every_job_of_a_grid_and_the_choices_of_an_optuna_search() -> None:
    """The jobs the sweep-wide check composes: the grid's product in the sweeper's order; for
    Optuna the command line's discrete choices, the search space left to the trials."""
    from app_helpers import compose_app

    from cskd_lightning.app.sweep import sweep_jobs

    def jobs(overrides: list[str]) -> list[list[str]]:
        sweeper = [o for o in overrides if o.startswith("hparams_search=")]
        cfg = compose_app("train", sweeper, return_hydra_config=True)
        cfg.hydra.overrides.task = overrides  # as the command line gives them
        return sweep_jobs(cfg)

    assert jobs(["distill=kd,ce", "seed=0,1", "data=digits"]) == [
        ["distill=kd", "seed=0", "data=digits"],
        ["distill=kd", "seed=1", "data=digits"],
        ["distill=ce", "seed=0", "data=digits"],
        ["distill=ce", "seed=1", "data=digits"],
    ]
    assert jobs(["distill.loss.temperature=range(2,5)"]) == [
        [f"distill.loss.temperature={t}" for t in (2, 3, 4)][i : i + 1] for i in range(3)
    ]
    optuna = ["hparams_search=optuna", "seed=0,1", "distill.loss.t_low=interval(1,3)"]
    assert jobs(optuna) == [
        ["hparams_search=optuna", "seed=0"],
        ["hparams_search=optuna", "seed=1"],
    ]


def test_a_run_saved_before_a_key_was_added_still_has_the_same_settings(tmp_path: Path) -> None:
    """A run directory written before ``module.fold_teacher_batchnorm`` (or the top-k size)
    existed resumes with today's defaults; turning the new option on is still a change."""
    from cskd_lightning.app.run_dir import ADDED_KEYS, diff_configs, relevant_config

    now = relevant_config(compose_train([], tmp_path))
    assert set(ADDED_KEYS) <= set(now)
    older = {k: v for k, v in now.items() if k not in ADDED_KEYS}
    assert diff_configs(older, now) == []
    folded = relevant_config(compose_train(["module.fold_teacher_batchnorm=true"], tmp_path))
    assert diff_configs(older, folded) == ["module.fold_teacher_batchnorm: False -> True"]
