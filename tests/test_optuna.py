"""hparams_search=optuna: a real 2-trial Optuna search through cskd-train on digits."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import FAST, compose_train, read_summary, run_cli
from omegaconf import OmegaConf

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper",
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
)
optuna = pytest.importorskip(
    "optuna", reason="optuna is not installed (pip install -e '.[optuna]')"
)

SEARCHED = ("temperature", "t_low", "t_high", "kd_weight")


def test_optuna_config_composes_with_the_search_space(tmp_path: Path) -> None:
    cfg = compose_train(["hparams_search=optuna"], tmp_path)
    assert cfg.optimized_metric == "val/acc_best"
    # compose() leaves the hydra node out of the job config; read the file itself.
    conf = Path(__file__).resolve().parents[1] / "conf" / "hparams_search" / "optuna.yaml"
    sweeper = OmegaConf.load(conf).hydra.sweeper
    assert sweeper.direction == "maximize"
    assert sweeper.n_trials == 20
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert isinstance(sweeper.sampler.seed, int)
    assert sorted(sweeper.params) == sorted(f"distill.loss.{k}" for k in SEARCHED)
    # The t_low and t_high ranges cannot cross.
    low, high = sweeper.params["distill.loss.t_low"], sweeper.params["distill.loss.t_high"]
    assert float(low.split(",")[1].strip(" )")) <= float(high.split("(")[1].split(",")[0])


@pytest.mark.slow
def test_two_trial_search_runs_and_writes_results(tmp_path: Path) -> None:
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
        assert 1.0 <= loss.t_low <= 3.0 <= 4.0 <= loss.t_high <= 8.0
        assert 1.0 <= loss.temperature <= 8.0
        assert 0.25 <= loss.kd_weight <= 4.0
        sampled.append(tuple(loss[k] for k in SEARCHED))
    assert sampled[0] != sampled[1]

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert sorted(results.best_params) == sorted(f"distill.loss.{k}" for k in SEARCHED)
    best = max(read_summary(t)["student"]["val_acc_best"] for t in trials)
    assert results.best_value == pytest.approx(best, abs=1e-6)

    # The study persisted in its storage: a later search can resume it.
    study = optuna.load_study(study_name="cskd_cswt", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.best_value == pytest.approx(best, abs=1e-6)
