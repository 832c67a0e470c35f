"""The sweep-wide check: every job of a ``cskd-train -m`` sweep is composed and checked before
the first one trains, so a bad value in the last job fails the sweep in one line at once, not
after hours of training the first jobs.

For the default (grid) sweeper every job is checked: the product of the command line's swept
values and ``hydra.sweeper.params``. For another sweeper (Optuna) the jobs its first batch can
hold are not known before it samples them; the command line's discrete choices are checked,
each with the search space's parameters at their config values (the values a trial samples are
checked by that trial itself, before it trains). A mistake in every job, such as an Optuna
search that would tune on the test set, is then reported once, before any trial.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app.checks import (
    check_accelerator,
    check_batch_for_loss,
    check_cache_dir,
    check_class_counts,
    check_data,
    check_logger_packages,
    check_module_class,
    check_per_process_batch,
    check_tuning_selection,
    check_world_size,
    config_errors,
    selection_of,
)
from cskd_lightning.app.jobs import quiet_logs
from cskd_lightning.errors import InputError

log = logging.getLogger("cskd_lightning")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the sweep's jobs that can be known before it starts (see the
    module's docstring), in the order the grid sweeper runs them."""
    sweeper = config.hydra.sweeper
    arguments = [str(o) for o in config.hydra.overrides.task]
    grid = str(sweeper.get("_target_", "")) == BASIC_SWEEPER
    if grid and sweeper.get("params"):
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
    """Built objects shared by the jobs whose config of them is the same (the data is loaded
    once per distinct ``data`` config, each model built once)."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}

    def get(self, what: str, node: Any, build: Any) -> Any:
        key = what + json.dumps(
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node,
            sort_keys=True,
            default=str,
        )
        if key not in self.store:
            self.store[key] = build()
        return self.store[key]


def check_job(cfg: DictConfig, direction: Any, memo: _Memo) -> None:
    """The checks ``cskd-train`` makes before a run trains, less those of its run directory
    (not made yet) and of a resume; raises the first :class:`InputError`."""
    from cskd_lightning.app.teacher_stage import build_logit_cache, build_teacher

    with config_errors():
        if cfg.get("threads") is not None and int(cfg.threads) < 1:
            raise InputError(f"threads={cfg.threads}: give 1 or more (or null: auto).")
        check_logger_packages(cfg)
        check_module_class(cfg)
        datamodule = memo.get(
            "data", cfg.data.datamodule, lambda: hydra.utils.instantiate(cfg.data.datamodule)
        )
        loss = hydra.utils.instantiate(cfg.distill.loss)
        check_batch_for_loss(cfg, loss)
        student = memo.get(
            "student",
            cfg.pair.student.model,
            lambda: hydra.utils.instantiate(cfg.pair.student.model),
        )
        check_class_counts(cfg, datamodule, student)
        memo.get(
            "teacher",
            [cfg.pair.teacher.model, cfg.teacher.get("ckpt_path")],
            lambda: build_teacher(cfg),
        )
        build_logit_cache(cfg, datamodule, loss)
        check_accelerator(cfg)
        trainer = memo.get(
            "trainer",
            cfg.trainer,
            lambda: hydra.utils.instantiate(
                cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False
            ),
        )
        check_per_process_batch(cfg, loss, trainer.world_size)
        check_world_size(datamodule, trainer.world_size)
        memo.get("loaded", cfg.data.datamodule, lambda: check_data(datamodule) or True)
        check_cache_dir(cfg)
        check_tuning_selection(cfg, selection_of(datamodule), direction)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class SweepCheck(HydraCallback):
    """Hydra callback: before a ``cskd-train`` multirun starts its first job, compose and check
    every job that can be known (:func:`sweep_jobs`); a job that would fail its checks ends the
    sweep with one ``Error:`` line naming it (and how many others fail), exit status 1,
    nothing trained and no sweep directory written."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if kwargs.get("config_name") != "train" or "LOCAL_RANK" in os.environ:
            return
        jobs = sweep_jobs(config)
        if len(jobs) < 1:
            return
        quiet_logs()
        loader = GlobalHydra.instance().config_loader()
        direction = config.hydra.sweeper.get("direction")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        memo = _Memo()
        failures: list[tuple[int, list[str], str]] = []
        for number, overrides in enumerate(jobs):
            swept = [o for o in overrides if o not in _fixed(config)]
            try:
                job_cfg = loader.load_sweep_config(config, overrides)
                job_cfg.paths.output_dir = str(sweep_dir / str(number))  # not made yet
                check_job(job_cfg, direction, memo)
            except InputError as err:
                failures.append((number, swept, str(err)))
            except Exception as err:  # noqa: BLE001 - a composition error, or what the job hits
                failures.append((number, swept, _first_line(err)))
        if not failures:
            log.info("Checked the %d job(s) of this sweep before the first trains.", len(jobs))
            return
        number, swept, message = failures[0]
        others = len(failures) - 1
        more = f" ({others} other job(s) of {len(jobs)} fail their checks too)" if others else ""
        where = f"job {number} ({' '.join(swept)})" if swept else "every job of this sweep"
        text = f"{where}: {message.rstrip('.')}{more}. Nothing was trained."
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise InputError(text)
        print(f"Error: {text}", file=sys.stderr)
        sys.exit(1)


def _fixed(config: DictConfig) -> set[str]:
    """The command line's overrides that every job shares (not worth repeating per job)."""
    out = set()
    for override in OverridesParser.create().parse_overrides(
        [str(o) for o in config.hydra.overrides.task]
    ):
        if not override.is_sweep_override():
            out.add(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return out
