"""hparams_search=optuna: a real 2-trial Optuna search through cskd-train on digits (the search
space: tests/unit/test_optuna.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import FAST, logged, optuna_search, read_summary, run_cli
from omegaconf import OmegaConf

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper",
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
)
optuna = pytest.importorskip(
    "optuna", reason="optuna is not installed (pip install -e '.[optuna]')"
)


def test_two_trial_search_runs_and_writes_results(tmp_path: Path) -> None:
    cfg, space = optuna_search()
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
        # what the sweeper maximises: the best validation accuracy of the trial's record
        assert summary["student"]["val_acc_best"] == pytest.approx(max(logged(trial, "val/acc")))
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
