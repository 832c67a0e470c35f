"""hparams_search=optuna: what the search maximises and its search space, point by point (a
real 2-trial search through cskd-train: tests/integration/test_optuna_runs.py)."""

from __future__ import annotations

import inspect

import hydra
import pytest
from app_helpers import optuna_search
from hydra.core.override_parser.types import IntervalSweep

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper",
    reason="hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')",
)
optuna = pytest.importorskip(
    "optuna", reason="optuna is not installed (pip install -e '.[optuna]')"
)

# The methods whose loss hparams_search=optuna tunes (the search's header names them).
TUNABLE = ("cskd_cswt", "cskd_cswt_ls", "cskd_full")


def test_the_search_maximises_an_accuracy() -> None:
    cfg, _ = optuna_search()
    assert "acc" in cfg.optimized_metric and cfg.hydra.sweeper.direction == "maximize"
    assert isinstance(cfg.hydra.sweeper.sampler.seed, int)  # a rerun samples the same trials


@pytest.mark.parametrize("method", TUNABLE)
def test_every_point_of_the_search_space_builds_the_loss(method: str) -> None:
    """Each searched key is an existing argument of the method's loss (so Optuna's
    ``distill.loss.<key>=<value>`` overrides it), and the corners of the space, including the
    closest the t_low and t_high ranges come, build a valid loss."""
    cfg, space = optuna_search([f"distill={method}"])
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
