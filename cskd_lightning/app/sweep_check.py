"""A sweep's jobs as they are known before it starts, and the sweep-wide check: every job of a
``cskd-train -m`` sweep is composed and checked before the first one trains, so a bad value in
the last job fails the sweep in one line at once, not after hours of training the first jobs.

For the default (grid) sweeper every job is known: the product of the command line's swept
values and ``hydra.sweeper.params``. For another sweeper (Optuna) the command line's discrete
choices are checked, each with the search space's parameters at their config values (a trial's
sampled values are checked by the trial itself, before it trains).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app import checks
from cskd_lightning.app.jobs import exit_with_error, quiet_logs
from cskd_lightning.errors import InputError
from cskd_lightning.files import stable_hash

log = logging.getLogger("cskd_lightning")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the sweep's jobs that can be known before it starts (see the
    module), in the order the grid sweeper runs them; one job for a single run."""
    sweeper = config.hydra.sweeper
    arguments = [str(o) for o in config.hydra.overrides.task]
    if str(sweeper.get("_target_", "")) == BASIC_SWEEPER and sweeper.get("params"):
        arguments = [f"{k}={v}" for k, v in sweeper.params.items()] + arguments
    axes: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:  # an interval: the search space's, sampled by the sweeper
            axes.pop(key, None)
    return [list(job) for job in itertools.product(*axes.values())]


class _Memo:
    """Objects built once per distinct config of them (the data is loaded once per ``data``)."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}

    def get(self, what: str, node: Any, build: Any) -> Any:
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        key = what + stable_hash(node)
        if key not in self.store:
            self.store[key] = build()
        return self.store[key]


def check_job(cfg: DictConfig, direction: Any, memo: _Memo) -> None:
    """The checks ``cskd-train`` makes before a run trains (:func:`checks.check_inputs`), less
    those of its run directory (not made yet) and of a resume; raises the first
    :class:`InputError`. What several jobs build from the same config is built once."""

    def make_trainer(loggers: list[Any], callbacks: list[Any]) -> Any:
        return memo.get(
            "trainer",
            cfg.trainer,
            lambda: hydra.utils.instantiate(
                cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False
            ),
        )

    with checks.config_errors():
        if cfg.get("threads") is not None and int(cfg.threads) < 1:
            raise InputError(f"threads={cfg.threads}: give 1 or more (or null: auto).")
        inputs = checks.check_inputs(cfg, make_trainer, memo.get)
        checks.check_tuning_selection(cfg, checks.selection_of(inputs.datamodule), direction)


class SweepCheck(HydraCallback):
    """Before a ``cskd-train`` multirun starts its first job, compose and check every job that
    can be known (:func:`sweep_jobs`); a job that would fail ends the sweep with one ``Error:``
    line naming it (and how many others fail), nothing trained, no sweep directory written."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if kwargs.get("config_name") != "train" or "LOCAL_RANK" in os.environ:
            return
        jobs = sweep_jobs(config)
        quiet_logs()
        loader = GlobalHydra.instance().config_loader()
        memo = _Memo()
        failures: list[tuple[int, str]] = []
        for number, overrides in enumerate(jobs):
            try:
                job_cfg = loader.load_sweep_config(config, overrides)
                job_cfg.paths.output_dir = str(Path(config.hydra.sweep.dir) / str(number))
                check_job(job_cfg, config.hydra.sweeper.get("direction"), memo)
            except InputError as err:
                failures.append((number, str(err)))
            except Exception as err:  # noqa: BLE001 - a composition error, or what the job hits
                first = (str(err).strip().splitlines() or [""])[0]
                failures.append((number, f"{type(err).__name__}: {first}"))
        if not failures:
            log.info("Checked the %d job(s) of this sweep before the first trains.", len(jobs))
            return
        number, message = failures[0]
        shared = set.intersection(*map(set, jobs))  # not worth repeating per job
        swept = [o for o in jobs[number] if o not in shared]
        more = f" ({len(failures) - 1} other job(s) of {len(jobs)} fail their checks too)"
        where = f"job {number} ({' '.join(swept)})" if swept else "every job of this sweep"
        text = f"{where}: {message.rstrip('.')}{more if len(failures) > 1 else ''}."
        exit_with_error(InputError(f"{text} Nothing was trained."))
