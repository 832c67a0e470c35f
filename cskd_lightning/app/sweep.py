"""A sweep before it starts: its jobs (:func:`sweep_jobs`), each composed and checked before the
first trains (:class:`SweepCheck`), and ``plan=true`` (:class:`SweepPlan`): its jobs, the
teachers they need and the teacher-logit caches they fill, with their size, nothing trained or
written (docs/scaling.md). For the default (grid) sweeper every job is known; for another
(Optuna) the command line's discrete choices, with the search space at its config values."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.filesize import decimal

from cskd_lightning.app import checks
from cskd_lightning.app.environment import given_threads
from cskd_lightning.app.jobs import exit_with_error, quiet_logs
from cskd_lightning.errors import InputError
from cskd_lightning.files import stable_hash
from cskd_lightning.logit_cache import cache_size_bytes

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


def _once(store: dict, key: Any, build: Callable[..., Any], *args: Any) -> Any:
    """``store[key]``, built by ``build(*args)`` the first time."""
    if key not in store:
        store[key] = build(*args)
    return store[key]


def check_job(cfg: DictConfig, direction: Any, built: dict) -> None:
    """The checks ``cskd-train`` makes before a run trains, less those of its run directory and
    of a resume; raises the first :class:`InputError`. What several jobs build from the same
    config node is built once (``built``: the store)."""

    def build(what: str, node: Any, make: Callable[[], Any]) -> Any:
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        return _once(built, what + stable_hash(plain), make)

    def make_trainer(loggers: list[Any], callbacks: list[Any]) -> Any:
        kwargs = {"callbacks": [], "logger": False, "enable_checkpointing": False}
        return build("trainer", cfg.trainer, lambda: hydra.utils.instantiate(cfg.trainer, **kwargs))

    with checks.config_errors():
        given_threads(cfg)
        inputs = checks.check_inputs(cfg, make_trainer, build)
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
        built: dict[str, Any] = {}
        failures: list[tuple[int, str]] = []
        for number, overrides in enumerate(jobs):
            try:
                job_cfg = loader.load_sweep_config(config, overrides)
                job_cfg.paths.output_dir = str(Path(config.hydra.sweep.dir) / str(number))
                check_job(job_cfg, config.hydra.sweeper.get("direction"), built)
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


PLAN_KEY = "plan"


@dataclass
class Need:
    """A teacher or a teacher-logit cache some jobs of the sweep need."""

    label: str
    where: str  # a teacher's file; a cache's epochs x samples x classes, or why not known
    status: str = ""  # a teacher's: "cached", "to train", "given", "pretrained"
    size: int | None = None  # a cache's bytes when full (None: not known)
    jobs: int = 0


@dataclass
class Plan:
    jobs: list[tuple[str, str, str]] = field(default_factory=list)  # (overrides, teacher, cache)
    teachers: dict[str, Need] = field(default_factory=dict)
    caches: dict[str, Need] = field(default_factory=dict)
    known: dict[Any, Any] = field(default_factory=dict)  # what is worked out once a sweep


class _Composer:
    """Job configs, composed once per distinct choice of config groups (see the module)."""

    def __init__(self, config_name: str) -> None:
        self.compose = functools.cache(lambda o: compose(config_name, overrides=list(o)))
        self.parse = functools.cache(OverridesParser.create().parse_override)
        self.working: dict[tuple[tuple[str, ...], str], DictConfig] = {}
        self.groups = set(GlobalHydra.instance().config_loader().list_groups(""))

    def _is_value(self, override: Any) -> bool:
        """A ``key=value`` override (set on a copy) rather than a config group choice, a
        deletion or a Hydra setting (composed)."""
        key = override.key_or_group
        group = key in self.groups or key.startswith("hydra") or "@" in key or "/" in key
        return not (group or override.is_delete())

    def job(self, overrides: list[str]) -> tuple[DictConfig, tuple[str, ...], str, list[str]]:
        """The job's config, its group overrides (``distill`` aside), its ``distill`` choice
        and its ``key=value`` overrides. The config is shared by the jobs with the same
        groups (each job's values are set in it in turn): read it before the next call."""
        parsed = [self.parse(line) for line in overrides]
        values = [o for o in parsed if self._is_value(o)]
        groups = [o for o in parsed if not self._is_value(o)]
        distill = next((o.input_line for o in reversed(groups) if o.key_or_group == "distill"), "")
        rest = tuple(sorted(o.input_line for o in groups if o.key_or_group != "distill"))
        if (rest, distill) not in self.working:
            working = self.compose(rest).copy()
            if distill:
                with open_dict(working):
                    working.distill = self.compose((distill,)).distill.copy()
            self.working[(rest, distill)] = working
        working = self.working[(rest, distill)]
        for o in values:
            key = o.get_key_element().lstrip("+")
            OmegaConf.update(working, key, o.value(), merge=True, force_add=True)
        return working, rest, distill, [o.input_line for o in values]


# Where a key=value override can change the teacher or its logit cache.
TEACHER_KEYS = ("data", "pair", "teacher", "trainer", "seed", "paths")


def _needs_teacher(cfg: DictConfig) -> bool:
    try:
        return bool(getattr(hydra.utils.instantiate(cfg.distill.loss), "requires_teacher", True))
    except Exception:  # noqa: BLE001 - a loss that does not build: the run itself will say
        return True


def _teacher(cfg: DictConfig, plan: Plan) -> tuple[str, str]:
    """The job's teacher, entered in ``plan.teachers``: ``("teacher <status>", its key)``."""
    from cskd_lightning.app.teacher_stage import teacher_cache_path, teacher_seed

    model = cfg.pair.teacher.model.name
    label = f"{model} on {cfg.data.name}, seed {teacher_seed(cfg)}"
    if cfg.teacher.get("ckpt_path"):
        status, path = "given", str(cfg.teacher.ckpt_path)
    elif cfg.pair.teacher.get("pretrained", False):
        status, path = "pretrained", "(torchvision weights)"
    else:
        entry = teacher_cache_path(cfg)
        status, path = ("cached" if entry.is_file() else "to train"), str(entry)
    plan.teachers.setdefault(path, Need(label, path, status))
    return f"teacher {status}", path


def _data_size(cfg: DictConfig) -> tuple[int, int, dict[str, Any]] | str:
    """``(N_train, N_eval, augmentation settings)`` of the job's device datamodule, or why not."""
    try:
        dm = hydra.utils.instantiate(cfg.data.datamodule)
        if not hasattr(dm, "split_tensors"):
            return "needs a device pipeline (data=<name>_device)"
        evaluated = (dm.split_tensors(split) for split in ("val", "test"))
        n_eval = sum(int(t[0].shape[0]) for t in evaluated if t is not None)
        return int(dm.split_tensors("train")[0].shape[0]), n_eval, dm.augmentation_settings()
    except Exception as err:  # noqa: BLE001 - the plan reports it; the run would fail
        return f"the data cannot be read ({type(err).__name__}: {err})"


def _logit_cache(cfg: DictConfig, teacher_path: str, plan: Plan) -> tuple[str, str]:
    """The job's teacher-logit cache, entered in ``plan.caches``: ``(its label, its key)``."""
    data_key = stable_hash([OmegaConf.to_container(cfg.data, resolve=True), cfg.seed])
    size = _once(plan.known, data_key, _data_size, cfg)  # loaded once per data config
    dtype = str(cfg.teacher.get("logit_cache_dtype", "float32"))
    topk = cfg.teacher.get("logit_cache_topk", 10) if dtype == "topk" else None
    name = dtype if topk is None else f"topk{topk}"  # a top-k cache of another k is another
    if isinstance(size, str):
        key = f"{teacher_path}|{cfg.data.name}|?"
        plan.caches.setdefault(key, Need(cfg.data.name, size))
    else:
        n, n_eval, augmentation = size
        epochs, classes = int(cfg.pair.student.recipe.max_epochs), int(cfg.data.num_classes)
        views = 2 if cfg.data.datamodule.get("two_view", False) else 1
        key = stable_hash([teacher_path, augmentation, name, cfg.trainer.get("precision")])
        label = (
            f"{cfg.pair.teacher.model.name} on {cfg.data.name}, augment_seed "
            f"{augmentation.get('augment_seed')}, {views} view(s), {name}"
        )
        try:
            full = cache_size_bytes(epochs, n, views, classes, dtype, n_eval, topk)
        except (KeyError, ValueError):  # an unknown dtype, a bad k: the job's check says so
            full = None
        need = plan.caches.setdefault(key, Need(label, ""))
        if need.size is None or (full or 0) >= need.size:  # the longest run fills the most
            need.size, need.where = full, f"{epochs} epochs x {n} samples x {classes} classes"
    return f"logit cache #{list(plan.caches).index(key)}", key


def make_plan(config: DictConfig) -> Plan:
    """The plan of the run or sweep that ``config`` (with its ``hydra`` node) describes."""
    composer = _Composer(str(config.hydra.job.config_name))
    plan = Plan()
    for overrides in sweep_jobs(config):
        job = [o for o in overrides if o.split("=")[0].lstrip("+") != PLAN_KEY]
        cfg, groups, distill, values = composer.job(job)
        top = (v.lstrip("+").split("=")[0].split(".")[0] for v in values)
        relevant = tuple(v for v, key in zip(values, top, strict=True) if key in TEACHER_KEYS)
        teacher, cache = "no teacher", ""
        if _once(plan.known, ("loss", groups, distill), _needs_teacher, cfg):
            teacher, path = _once(plan.known, ("teacher", groups, relevant), _teacher, cfg, plan)
            plan.teachers[path].jobs += 1
            if cfg.teacher.get("logit_cache", False):
                cache_of = ("cache", groups, distill, relevant)
                cache, key = _once(plan.known, cache_of, _logit_cache, cfg, path, plan)
                plan.caches[key].jobs += 1
        plan.jobs.append((" ".join(job), teacher, cache))
    return plan


def print_plan(plan: Plan) -> None:
    lines = [f"Plan: {len(plan.jobs)} job(s); nothing is trained or written (plan=true).", ""]
    if plan.teachers:
        counts = sorted(Counter(t.status for t in plan.teachers.values()).items())
        counted = ", ".join(f"{n} {status}" for status, n in counts)
        lines.append(f"Teachers: {len(plan.teachers)} ({counted})")
    else:
        lines.append("Teachers: none (no job needs one)")
    for t in sorted(plan.teachers.values(), key=lambda t: (t.status, t.label)):
        lines.append(f"  {t.status:<10} {t.label} ({t.jobs} job(s)): {t.where}")
    if plan.caches:
        total = decimal(sum(c.size or 0 for c in plan.caches.values()))
        lines += [
            "",
            f"Teacher-logit caches: {len(plan.caches)}, {total} on disk when full (stored "
            "epochs are reused; the key includes the trained teacher's weights)",
        ]
        for i, c in enumerate(plan.caches.values()):
            size = "size unknown" if c.size is None else decimal(c.size)
            lines.append(f"  #{i} {c.label} ({c.jobs} job(s)): {size}, {c.where}")
    lines += ["", "Jobs:"]
    for i, (overrides, teacher, cache) in enumerate(plan.jobs):
        cache = f", {cache}" if cache else ""
        lines.append(f"  #{i} {overrides or '(defaults)'}: {teacher}{cache}")
    print("\n".join(lines))


class SweepPlan(HydraCallback):
    """With ``plan=true``: print the plan (:func:`make_plan`) instead of running, exit 0."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get(PLAN_KEY, False):
            return
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        if sweeper != BASIC_SWEEPER:
            exit_with_error(
                "plan=true lists the jobs of a sweep given as value lists (a=1,2 b=x,y), but "
                f"this sweep's jobs are chosen while it runs ({sweeper.rsplit('.', 1)[-1]}, e.g. "
                "hparams_search=optuna): plan one trial's settings without the search (its "
                "teacher and logit cache are every trial's)."
            )
        print_plan(make_plan(config))
        sys.exit(0)

    on_multirun_start = on_run_start
