"""Checks run before anything is trained or written: a bad input fails in one clear line, an
:class:`~cskd_lightning.errors.InputError` naming the config key and the fix (docs/errors.md)."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.app.jobs import exit_with_error, sweep_direction
from cskd_lightning.errors import InputError, UnwritablePathError, config_keys


@dataclass
class Inputs:
    """What a run is built from, checked."""

    loggers: list[Any]
    datamodule: Any
    loss: Any
    features: dict[str, Any] | None
    teacher: tuple[Any, Path | None]
    logit_cache: Any
    trainer: Any


def check_inputs(
    cfg: DictConfig,
    make_trainer: Callable[[list[Any], list[Any]], Any],
    build: Callable[[str, Any, Callable[[], Any]], Any] | None = None,
) -> Inputs:
    """Build and check what ``cfg`` describes, before anything is written or trained.
    ``make_trainer(loggers, callbacks)`` builds the trainer; ``build(what, node, make)`` may
    share what is built from the same config ``node`` between the jobs of a sweep."""
    from cskd_lightning.app.teacher_stage import build_logit_cache, build_teacher

    build = build or (lambda what, node, make: make())
    loggers = build_loggers(cfg)
    check_module_class(cfg)
    data, models = cfg.data.datamodule, cfg.pair
    datamodule = build("data", data, lambda: hydra.utils.instantiate(data))
    loss = hydra.utils.instantiate(cfg.distill.loss)
    student = build(
        "student", models.student.model, lambda: hydra.utils.instantiate(models.student.model)
    )
    check_class_counts(cfg, datamodule, student)
    features = feature_layers(cfg, loss)  # a feature method: the pair's layers, checked
    teacher_node = [models.teacher.model, cfg.teacher.get("ckpt_path")]
    teacher = build("teacher", teacher_node, lambda: build_teacher(cfg))
    if cfg.module.get("fold_teacher_batchnorm", False):
        from cskd_lightning.teacher_inference import check_foldable

        with config_keys({"fold_teacher_batchnorm": "module.fold_teacher_batchnorm"}):
            check_foldable(teacher[0], loss)  # before the teacher trains
    logit_cache = build_logit_cache(cfg, datamodule, loss)  # teacher.logit_cache=true
    accelerator = str(cfg.trainer.get("accelerator", "cpu")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise InputError(
            f"trainer.accelerator={accelerator}, but this machine has no GPU that PyTorch can "
            "use (torch.cuda.is_available() is False). Add trainer=cpu to the command to train "
            "on the CPU (e.g. cskd-train experiment=cifar100_standard pair=<pair> trainer=cpu), "
            "or run it where a GPU is."
        )
    trainer = make_trainer(loggers, [logit_cache] if logit_cache is not None else [])
    check_per_process_batch(cfg, loss, trainer.world_size)
    if trainer.world_size > 1 and hasattr(datamodule, "check_world_size"):
        with config_keys(DATA_KEYS):  # the global batches divide by it
            datamodule.check_world_size(trainer.world_size)
    build("loaded", data, lambda: check_data(datamodule))  # a missing or corrupt dataset, now
    if not (cfg.teacher.get("ckpt_path") or cfg.pair.teacher.get("pretrained", False)):
        cache = Path(str(cfg.paths.cache_dir)).expanduser()  # a teacher will be cached there
        problem = output_dir_problem(cache / "teachers")
        if problem is not None:
            raise UnwritablePathError(
                f"The teacher cache {cache} cannot be used: {problem}. Point CSKD_CACHE_DIR (or "
                "paths.cache_dir=<dir>) at a writable directory."
            )
    return Inputs(loggers, datamodule, loss, features, teacher, logit_cache, trainer)


DATA_KEYS = {"num_classes": "data.num_classes"} | {
    k: f"data.datamodule.{k}" for k in ("data_dir", "batch_size", "eval_batch_size", "val_split")
}
"""The config keys of the datamodule arguments its errors at setup name."""


def check_data(datamodule: Any) -> bool:
    """Load the data once (the datamodule keeps it); its errors name their config keys."""
    with config_keys(DATA_KEYS):
        datamodule.prepare_data()
        datamodule.setup("fit")
    return True


def output_dir_problem(path: Path, note: bool = False) -> str | None:
    """Why ``path`` cannot be a run directory (``None`` if it can), without creating it: its
    nearest existing ancestor must be a writable directory. ``note``: remember the missing
    directories, to be removed if the command fails (:func:`remove_created_dirs`)."""
    probe, missing = Path(os.path.abspath(path)), []
    while not probe.exists():
        if probe.parent == probe:
            return f"none of its parent directories exist ({probe})"
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    if note and missing:
        _created_dirs[:] = missing
    return None


_created_dirs: list[Path] = []  # made for this command (deepest first): removed if it fails


def remove_created_dirs() -> None:
    """Remove the directories this command created, if still empty."""
    while _created_dirs:
        try:
            _created_dirs.pop(0).rmdir()
        except OSError:  # not empty (or gone): keep it and its parents
            _created_dirs.clear()


def check_output_dir(path: Path, key: str = "hydra.run.dir", create: bool = True) -> None:
    """Refuse ``path`` (what ``key`` sets) unless it can be written; ``create``: create it if
    needed and prove it writable (a temporary file), else only look (Hydra creates it next)."""
    problem = output_dir_problem(path, note=key == "hydra.run.dir")
    if problem is None and create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            problem = f"{type(err).__name__}: {err.strerror or err}"
    if problem is not None:
        raise UnwritablePathError(
            f"Output directory {path} cannot be written: {problem}. Choose a writable location "
            f"with {key}=<dir> (or paths.log_dir=<dir>)."
        )


class OutputDirCheck(HydraCallback):
    """Hydra callback: refuse an unwritable ``hydra.run.dir`` / ``hydra.sweep.dir`` before Hydra
    creates it (Hydra's own failure is a traceback)."""

    def _check(self, config: DictConfig, key: str) -> None:
        value = OmegaConf.select(config, key, throw_on_resolution_failure=False)
        if value:  # else unset, or unresolvable: Hydra's to report
            try:
                check_output_dir(Path(str(value)), key, create=False)
            except UnwritablePathError as err:
                exit_with_error(err)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """Turn Hydra's ``InstantiationException`` around an :class:`InputError` (unknown model, bad
    loss argument, ...) back into that error, naming the config key: no traceback for it."""
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        match = re.search(r"full_key:\s*(\S+)", str(err))
        key = match.group(1) if match else None
        if isinstance(cause, InputError):
            key = f"{key}.{cause.key}" if key and cause.key else key
            where = f" (config: {key})" if key else ""
            raise type(cause)(f"{cause}{where}", key=key) from err
        known = _known_instantiation_mistake(err, cause, key)
        if known is None:
            raise
        raise known from err


def _known_instantiation_mistake(
    err: InstantiationException, cause: BaseException | None, key: str | None
) -> InputError | None:
    """A ``_target_`` that cannot be imported (own code without ``PYTHONPATH=.``, a misspelt
    path) or an argument the target does not take (a misspelt key added with ``+``)."""
    node = key or "the config"
    located = re.search(r"Error locating target '([^']+)'", str(err))
    if located:
        reason = cause
        while reason is not None and reason.__cause__ is not None:
            reason = reason.__cause__
        why = f" ({reason})" if reason is not None else ""
        return InputError(
            f"{node}._target_={located.group(1)} cannot be imported{why}. If it is your own code "
            "in the current directory, run the command with PYTHONPATH=. in front (the installed "
            "command does not import from the current directory); else check the path's "
            "spelling or install its package.",
            key=f"{node}._target_",
        )
    unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(cause or ""))
    called = re.search(r"Error in call to target '([^']+)'", str(err))
    if not (unexpected and called):
        return None
    name, target = unexpected.group(1), called.group(1)
    try:
        params = inspect.signature(get_object(target)).parameters.values()
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (ImportError, ValueError, TypeError):
        accepted = []
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f"Did you mean {node}.{close[0]}? " if close else ""
    listed = f" It takes: {', '.join(accepted)}." if accepted else ""
    return InputError(
        f"{node}.{name}: {target.rsplit('.', 1)[-1]} takes no argument {name!r}. {hint}"
        f"Remove the override (+{node}.{name}=...) or fix its spelling.{listed}",
        key=f"{node}.{name}",
    )


def check_class_counts(cfg: DictConfig, datamodule: Any, student: Any) -> None:
    """``data.num_classes``, the datamodule's, the teacher config's and the student's agree."""
    from cskd_lightning.module import infer_num_classes

    teacher, student_cfg = cfg.pair.teacher.model, cfg.pair.student.model
    teacher_count = teacher.get("num_classes")
    counts = {
        "data.num_classes": int(cfg.data.num_classes),
        f"the datamodule ({type(datamodule).__name__}).num_classes": (
            getattr(datamodule, "num_classes", None) or None
        ),
        f"the teacher (pair.teacher.model: {teacher.get('name')})": (
            teacher_count if isinstance(teacher_count, int) else None
        ),
        f"the student (pair.student.model: {student_cfg.get('name')})": infer_num_classes(student),
    }
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{k} = {v}" for k, v in known.items())
        raise InputError(
            f"Class counts disagree: {listed}. They must all be equal: build both models with "
            "num_classes=${data.num_classes} (the pairs' default) and set data.num_classes to "
            "the dataset's class count."
        )


def check_per_process_batch(cfg: DictConfig, loss: Any, world_size: int = 1) -> None:
    """A batch-level loss needs 2 samples a batch; without gathering (``gather=false``) in each
    process's own batch."""
    batch = int(cfg.data.datamodule.batch_size)
    if not getattr(loss, "batch_level", False):
        return
    if batch < 2:
        where = f"data.datamodule.batch_size={batch}"
    elif world_size > 1 and not getattr(loss, "gather", True) and batch // world_size < 2:
        where = (
            f"data.datamodule.batch_size={batch} over {world_size} processes is "
            f"{batch // world_size} sample per process and distill.loss.gather=false"
        )
    else:
        return
    raise InputError(
        f"{where}, but {type(loss).__name__} (distill={cfg.distill.get('name')}) has batch-level "
        "terms (batch_level=True): it compares predictions across the samples of a batch, and "
        "with one sample per batch those terms are constant and teach nothing. Use "
        "data.datamodule.batch_size=2 or more (the recipes use 64), or a per-sample method "
        "such as distill=kd."
    )


def feature_layers(cfg: DictConfig, loss: Any) -> dict[str, Any] | None:
    """The pair's ``features`` block for a feature loss (``None`` for a logit loss), checked
    against the roles the loss declares and the models' submodule names."""
    from cskd_lightning.features import FeatureHooks, check_feature_map
    from cskd_lightning.losses.feature_base import FeatureDistillationLoss

    if not isinstance(loss, FeatureDistillationLoss):
        return None
    block = cfg.pair.get("features")
    if block is None:
        raise InputError(
            f"distill={cfg.distill.get('name')} distils intermediate features, but "
            f"pair={cfg.pair.get('name')} names no feature layers (no pair.features block). "
            "Use a pair with one (docs/methods.md lists them) or add pair.features.student and "
            "pair.features.teacher."
        )
    features = OmegaConf.to_container(block, resolve=True)
    assert isinstance(features, dict)
    for role, roles in (("student", loss.student_features), ("teacher", loss.teacher_features)):
        layers = check_feature_map(features.get(role), roles, role, where="pair.features")
        FeatureHooks(hydra.utils.instantiate(cfg.pair[role].model), layers, role)
    return features


def check_module_class(cfg: DictConfig) -> None:
    """``module._target_`` names an importable subclass of ``DistillationModule``."""
    from cskd_lightning.module import DistillationModule

    target = str((cfg.get("module") or {}).get("_target_") or "")
    fix = (
        "Give module._target_=<package.module.Class>, a subclass of "
        "cskd_lightning.DistillationModule whose package is importable (PYTHONPATH=. for one "
        "in the current directory), or leave the default module=default."
    )
    if "." not in target:
        target = target or "(not set)"
        raise InputError(f"module._target_={target} is not a class path. {fix}")
    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # it logs the error we say in one line
    try:
        cls = get_object(target)
    except ImportError as err:
        while err.__cause__ is not None:
            err = err.__cause__
        raise InputError(f"module._target_={target} cannot be imported ({err}). {fix}") from err
    finally:
        hydra_log.setLevel(level)
    if not (isinstance(cls, type) and issubclass(cls, DistillationModule)):
        raise InputError(f"module._target_={target} is not a DistillationModule subclass. {fix}")


def selection_of(datamodule: Any) -> str:
    """The split ``val/*`` (hence the best checkpoint) is measured on: ``"validation"``,
    ``"test"`` (``val_split: 0``, the published tables' convention) or ``"unknown"``."""
    val_is_test = getattr(datamodule, "val_is_test", None)
    return "unknown" if val_is_test is None else "test" if val_is_test else "validation"


def check_tuning_selection(cfg: DictConfig, selection: str, direction: Any = None) -> None:
    """An optimising sweeper (``direction``, else the running job's) must not tune on the test
    set unless the user says so."""
    direction = sweep_direction() if direction is None else direction
    if selection != "test" or direction is None or cfg.get("tune_on_test_set"):
        return
    raise InputError(
        f"This sweep optimises {cfg.get('optimized_metric')}, but with "
        "data.datamodule.val_split=0 the validation metrics are computed on the TEST set, so "
        "the search would tune on it. Hold out a validation split (e.g. "
        "data.datamodule.val_split=5000), or pass tune_on_test_set=true to tune on the test set "
        "knowingly."
    )


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The loggers of ``cfg.logger``; a missing package (Lightning's ``ImportError`` when a
    logger is built) becomes one line naming it and the extra that installs it."""
    from importlib.metadata import PackageNotFoundError, metadata

    loggers = []
    for key, entry in (cfg.get("logger") or {}).items():
        if not entry or "_target_" not in entry:
            continue
        try:
            loggers.append(hydra.utils.instantiate(entry))
        except InstantiationException as err:
            missing = err.__cause__
            if not isinstance(missing, ImportError):
                raise
            names = re.findall(r"Requirement '([\w.-]+?)[<>=!~ ']", str(missing))
            packages = names or [missing.name or key]
            try:
                extra = key in (metadata("cskd-lightning").get_all("Provides-Extra") or [])
            except PackageNotFoundError:
                extra = False
            install = (
                f'pip install "cskd-lightning[{key}]"' if extra else f"pip install {packages[0]}"
            )
            raise InputError(
                f"logger.{key} ({entry._target_}) needs the {' or '.join(packages)} package, "
                f"which is not installed: {install} (or choose another logger, e.g. logger=csv)."
            ) from None
    return loggers
