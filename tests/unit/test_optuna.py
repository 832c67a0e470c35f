"""hparams_search=optuna: a real 2-trial Optuna search through cskd-train on digits."""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
import pytest
from app_helpers import FAST, read_summary, run_cli
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from omegaconf import DictConfig, OmegaConf

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper",
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
)
optuna = pytest.importorskip(
    "optuna", reason="optuna is not installed (pip install -e '.[optuna]')"
)

# The methods whose loss hparams_search=optuna tunes (the search's header names them).
TUNABLE = ("cskd_cswt", "cskd_cswt_ls", "cskd_full")


def search(overrides: list[str] | None = None) -> tuple[DictConfig, dict[str, IntervalSweep]]:
    """The composed config with ``hparams_search=optuna`` and its search space, each parameter
    parsed as Hydra's sweeper parses it."""
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hparams_search=optuna", *(overrides or [])],
            return_hydra_config=True,
        )
    parser = OverridesParser.create()
    space = {
        key: parser.parse_override(f"{key}={value}").value()
        for key, value in cfg.hydra.sweeper.params.items()
    }
    return cfg, space


def test_the_search_maximises_an_accuracy() -> None:
    cfg, _ = search()
    assert "acc" in cfg.optimized_metric and cfg.hydra.sweeper.direction == "maximize"
    assert isinstance(cfg.hydra.sweeper.sampler.seed, int)  # a rerun samples the same trials


@pytest.mark.parametrize("method", TUNABLE)
def test_every_point_of_the_search_space_builds_the_loss(method: str) -> None:
    """Each searched key is an existing argument of the method's loss (so Optuna's
    ``distill.loss.<key>=<value>`` overrides it), and the corners of the space, including the
    closest the t_low and t_high ranges come, build a valid loss."""
    cfg, space = search([f"distill={method}"])
    loss_cfg = cfg.distill.loss
    arguments = inspect.signature(hydra.utils.get_class(loss_cfg._target_)).parameters
    names = {}
    for key, sweep in space.items():
        assert isinstance(sweep, IntervalSweep) and sweep.start < sweep.end, key
        group, _, name = key.rpartition(".")
        assert group == "distill.loss" and name in arguments and name in loss_cfg, key
        names[name] = sweep
    assert {"t_low", "t_high"} <= set(names)
    corners = [
        {name: sweep.start for name, sweep in names.items()},
        {name: sweep.end for name, sweep in names.items()},
        {"t_low": names["t_low"].end, "t_high": names["t_high"].start},
    ]
    for corner in corners:
        loss = hydra.utils.instantiate(loss_cfg, **corner)
        assert all(getattr(loss, name) == value for name, value in corner.items()), corner


@pytest.mark.slow
def test_two_trial_search_runs_and_writes_results(tmp_path: Path) -> None:
    cfg, space = search()
    searched = [key.rpartition(".")[2] for key in space]
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "hparams_search=optuna",
            *FAST,
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'hpo.db'}",
            f"hydra.sweep.dir={sweep}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    sampled = []
    for trial in trials:
        summary = read_summary(trial)
        assert summary["method"] == "cskd_cswt"
        assert 0.0 <= summary["student"]["val_acc_best"] <= 1.0
        loss = OmegaConf.load(trial / "config.yaml").distill.loss
        for key, bounds in space.items():  # every trial inside the search space
            assert bounds.start <= loss[key.rpartition(".")[2]] <= bounds.end, key
        assert loss.t_low <= loss.t_high
        sampled.append(tuple(loss[k] for k in searched))
    assert sampled[0] != sampled[1]

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert sorted(results.best_params) == sorted(space)
    best = max(read_summary(t)["student"]["val_acc_best"] for t in trials)
    assert results.best_value == pytest.approx(best, abs=1e-6)

    # The study persisted in its storage: a later search can resume it.
    study = optuna.load_study(
        study_name=cfg.hydra.sweeper.study_name, storage=f"sqlite:///{tmp_path / 'hpo.db'}"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.best_value == pytest.approx(best, abs=1e-6)
