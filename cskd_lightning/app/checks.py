"""Checks run before anything is trained or written, so a bad input fails in one clear line.

Each raises an :class:`~cskd_lightning.errors.InputError` saying what is wrong, where (the
config key) and how to fix it; ``cskd-train`` prints it as ``Error: <message>`` without a
traceback. ``docs/errors.md`` lists them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from cskd_lightning.errors import InputError, UnwritablePathError


# --------------------------------------------------------------------------- output dir
def output_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as a run directory (``None`` if it can), without creating it.

    Walks up to the nearest existing ancestor: it must be a writable directory.
    """
    path = Path(os.path.abspath(path))
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"none of its parent directories exist ({probe})"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _dir_error(path: Path, problem: str, key: str) -> UnwritablePathError:
    return UnwritablePathError(
        f"Output directory {path} cannot be written: {problem}. Choose a writable location "
        f"with {key}=<dir> (or paths.log_dir=<dir>)."
    )


_created_dirs: list[Path] = []
"""The directories :func:`check_output_dir` created (deepest first), for
:func:`remove_created_dirs`."""


def remove_created_dirs() -> None:
    """Remove the directories :func:`check_output_dir` created, if still empty: a command that
    fails its checks leaves no empty run directory behind."""
    while _created_dirs:
        try:
            _created_dirs.pop(0).rmdir()
        except OSError:  # not empty (or gone): keep it and its parents
            _created_dirs.clear()


def note_missing_dirs(path: Path) -> None:
    """Remember the directories of ``path`` that do not exist yet (about to be created by
    Hydra or :func:`check_output_dir`), for :func:`remove_created_dirs`."""
    missing, probe = [], Path(os.path.abspath(path))
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    if missing:
        _created_dirs[:] = missing


def check_output_dir(path: Path, key: str = "hydra.run.dir") -> None:
    """Create ``path`` if needed and prove it writable (a temporary file); else PermissionError.
    The directories it creates are remembered (:func:`remove_created_dirs`)."""
    problem = output_dir_problem(path)
    if problem is None:
        note_missing_dirs(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            problem = f"{type(err).__name__}: {err.strerror or err}"
    if problem is not None:
        raise _dir_error(path, problem, key)


class OutputDirCheck(HydraCallback):
    """Hydra callback: refuse an unwritable ``hydra.run.dir`` / ``hydra.sweep.dir`` before Hydra
    creates it (Hydra's own failure is a traceback)."""

    def _check(self, config: DictConfig, key: str) -> None:
        try:
            value = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - an unresolvable dir is Hydra's to report
            return
        if not value:
            return
        path = Path(str(value))
        problem = output_dir_problem(path)
        if problem is None:
            if key == "hydra.run.dir":
                note_missing_dirs(path)  # Hydra creates it next; removed if the checks fail
            return
        err = _dir_error(path, problem, key)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise err
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")


# --------------------------------------------------------------------------- instantiate
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
        if not isinstance(cause, InputError):
            known = _known_instantiation_mistake(err, cause, key)
            if known is None:
                raise
            raise known from err
        if key and getattr(cause, "key", None):
            key = f"{key}.{cause.key}"
        where = f" (config: {key})" if key else ""
        raise type(cause)(f"{cause}{where}", key=key) from err


def _known_instantiation_mistake(
    err: InstantiationException, cause: BaseException | None, key: str | None
) -> InputError | None:
    """The user's mistakes behind a Hydra ``InstantiationException``, as one line with the fix:
    a ``_target_`` that cannot be imported (own code without ``PYTHONPATH=.``, a misspelt
    path) and an argument the target does not take (a misspelt key added with ``+``)."""
    import difflib
    import inspect

    node = key or "the config"
    located = re.search(r"Error locating target '([^']+)'", str(err))
    if located:
        target = located.group(1)
        reason = cause
        while reason is not None and reason.__cause__ is not None:
            reason = reason.__cause__
        why = f" ({reason})" if reason is not None else ""
        return InputError(
            f"{node}._target_={target} cannot be imported{why}. If it is your own code in the "
            "current directory, run the command with PYTHONPATH=. in front (the installed "
            "command does not import from the current directory); else check the path's "
            "spelling or install its package.",
            key=f"{node}._target_",
        )
    unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(cause or ""))
    called = re.search(r"Error in call to target '([^']+)'", str(err))
    if unexpected and called:
        name, target = unexpected.group(1), called.group(1)
        accepted: list[str] = []
        try:
            from hydra.utils import get_object

            params = inspect.signature(get_object(target)).parameters.values()
            accepted = [
                p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        except (ImportError, ValueError, TypeError):
            pass
        close = difflib.get_close_matches(name, accepted, n=1)
        hint = f"Did you mean {node}.{close[0]}? " if close else ""
        listed = f" It takes: {', '.join(accepted)}." if accepted else ""
        return InputError(
            f"{node}.{name}: {target.rsplit('.', 1)[-1]} takes no argument {name!r}. {hint}"
            f"Remove the override (+{node}.{name}=...) or fix its spelling.{listed}",
            key=f"{node}.{name}",
        )
    return None


# --------------------------------------------------------------------------- class counts
def _declared_classes(model_cfg: DictConfig) -> int | None:
    value = model_cfg.get("num_classes") if isinstance(model_cfg, DictConfig) else None
    return int(value) if isinstance(value, int) else None


def check_class_counts(cfg: DictConfig, datamodule: Any, student: Any) -> None:
    """``data.num_classes``, the datamodule's, the teacher's and the student's must agree.

    The student is a built model (its real output size); the teacher's count is read from its
    config (``pair.teacher.model.num_classes``) so that nothing is trained before the check.
    """
    from cskd_lightning.module import infer_num_classes

    counts: dict[str, int | None] = {
        "data.num_classes": int(cfg.data.num_classes),
        f"the datamodule ({type(datamodule).__name__}).num_classes": getattr(
            datamodule, "num_classes", None
        )
        or None,
        f"the teacher (pair.teacher.model: {cfg.pair.teacher.model.get('name')})": (
            _declared_classes(cfg.pair.teacher.model)
        ),
        f"the student (pair.student.model: {cfg.pair.student.model.get('name')})": (
            infer_num_classes(student)
        ),
    }
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{k} = {v}" for k, v in known.items())
        raise InputError(
            f"Class counts disagree: {listed}. They must all be equal: build both models with "
            "num_classes=${data.num_classes} (the pairs' default) and set data.num_classes to "
            "the dataset's class count."
        )


# --------------------------------------------------------------------------- batch size
def _batch_level_error(loss: Any, where: str, cfg: DictConfig) -> InputError:
    name = type(loss).__name__
    return InputError(
        f"{where}, but {name} (distill={cfg.distill.get('name')}) has batch-level terms "
        "(batch_level=True): it compares predictions across the samples of a batch, and with "
        "one sample per batch those terms are constant and teach nothing. Use "
        "data.datamodule.batch_size=2 or more (the recipes use 64), or a per-sample method "
        "such as distill=kd."
    )


def check_batch_for_loss(cfg: DictConfig, loss: Any) -> None:
    """A batch-level loss needs a global batch of at least 2 samples (checked before training)."""
    if getattr(loss, "batch_level", False) and int(cfg.data.datamodule.batch_size) < 2:
        raise _batch_level_error(loss, "data.datamodule.batch_size=1", cfg)


def check_per_process_batch(cfg: DictConfig, loss: Any, world_size: int) -> None:
    """Without gathering (``gather=false``) each process's own batch must hold 2 samples."""
    batch = int(cfg.data.datamodule.batch_size)
    if (
        getattr(loss, "batch_level", False)
        and not getattr(loss, "gather", True)
        and world_size > 1
        and batch // world_size < 2
    ):
        raise _batch_level_error(
            loss,
            f"data.datamodule.batch_size={batch} over {world_size} processes is "
            f"{batch // world_size} sample per process and distill.loss.gather=false",
            cfg,
        )


# --------------------------------------------------------------------------- features
def feature_layers(cfg: DictConfig, loss: Any) -> dict[str, Any] | None:
    """The pair's ``features`` block for a feature loss (``None`` for a logit loss), checked
    against the roles the loss declares and the models' submodule names, before training."""
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


# --------------------------------------------------------------------------- module
def check_module_class(cfg: DictConfig) -> type:
    """``module._target_`` names an importable subclass of
    :class:`~cskd_lightning.module.DistillationModule` (``cskd-train`` reads its student, metrics
    and checkpoints); checked before the teacher trains. Returns the class."""
    import importlib

    from cskd_lightning.module import DistillationModule

    target = str((cfg.get("module") or {}).get("_target_") or "")
    fix = (
        "Give module._target_=<package.module.Class>, a subclass of "
        "cskd_lightning.DistillationModule whose package is importable (PYTHONPATH=. for one "
        "in the current directory), or leave the default module=default."
    )
    module_name, _, name = target.rpartition(".")
    if not module_name:
        raise InputError(f"module._target_={target or '(not set)'} is not a class path. {fix}")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InputError(f"module._target_={target} cannot be imported ({err}). {fix}") from err
    if not (isinstance(cls, type) and issubclass(cls, DistillationModule)):
        raise InputError(f"module._target_={target} is not a DistillationModule subclass. {fix}")
    return cls


# --------------------------------------------------------------------------- cache dir
def check_cache_dir(cfg: DictConfig) -> None:
    """The teacher cache (``paths.cache_dir``, ``CSKD_CACHE_DIR``) must be a writable directory
    or creatable; found before any teacher trains (its file is written after training)."""
    if cfg.teacher.get("ckpt_path") or cfg.pair.teacher.get("pretrained", False):
        return  # nothing will be cached
    cache = Path(str(cfg.paths.cache_dir)).expanduser()
    problem = output_dir_problem(cache / "teachers")
    if problem is not None:
        raise UnwritablePathError(
            f"The teacher cache {cache} cannot be used: {problem}. Point CSKD_CACHE_DIR (or "
            "paths.cache_dir=<dir>) at a writable directory."
        )


# --------------------------------------------------------------------------- accelerator
GPU_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer (``trainer=gpu``, ``trainer=ddp``, the published ``experiment=`` presets)
    on a machine without a usable GPU: one line saying to add ``trainer=cpu`` (Lightning's own
    failure is a traceback, "No supported gpu backend found!")."""
    import torch

    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "cpu")).lower()
    if accelerator not in GPU_ACCELERATORS or torch.cuda.is_available():
        return
    raise InputError(
        f"trainer.accelerator={accelerator}, but this machine has no GPU that PyTorch can use "
        "(torch.cuda.is_available() is False). Add trainer=cpu to the command to train on the "
        "CPU (e.g. cskd-train experiment=cifar100_standard pair=<pair> trainer=cpu), or run it "
        "where a GPU is."
    )


# --------------------------------------------------------------------------- data
def check_data(datamodule: Any) -> None:
    """Load the data once (``prepare_data`` and ``setup("fit")``), so a missing or corrupt
    dataset is found before anything is written; the datamodule keeps what it loaded."""
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")


def check_world_size(datamodule: Any, world_size: int) -> None:
    """The global batch sizes must divide by the trainer's process count."""
    if world_size > 1 and hasattr(datamodule, "check_world_size"):
        datamodule.check_world_size(world_size)


# --------------------------------------------------------------------------- selection
TUNE_ON_TEST_FLAG = "tune_on_test_set=true"


def selection_of(datamodule: Any) -> str:
    """Which split ``val/*`` (and so ``val/acc_best`` and the best checkpoint) is measured on:
    ``"validation"`` (a held-out split), ``"test"`` (``val_split: 0``: the test set, the
    convention of the published CIFAR and ImageNet tables) or ``"unknown"`` (a datamodule that
    does not say)."""
    val_is_test = getattr(datamodule, "val_is_test", None)
    if val_is_test is None:
        return "unknown"
    return "test" if val_is_test else "validation"


def sweeper_direction() -> Any:
    """The running sweeper's ``direction`` (an optimising sweeper such as Optuna), else None."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().sweeper.get("direction")
    except ValueError:  # not inside a Hydra app
        return None


def check_tuning_selection(cfg: DictConfig, selection: str, direction: Any = None) -> None:
    """An optimising sweeper must not tune on the test set unless the user says so.

    ``direction``: the sweeper's (given by the sweep-wide check, which runs before any job);
    else read from the running job's Hydra config."""
    if direction is None:
        direction = sweeper_direction()
    if selection != "test" or direction is None or cfg.get("tune_on_test_set"):
        return
    raise InputError(
        f"This sweep optimises {cfg.get('optimized_metric')}, but with "
        "data.datamodule.val_split=0 the validation metrics are computed on the TEST set, so "
        "the search would tune on it. Hold out a validation split (e.g. "
        "data.datamodule.val_split=5000), or pass "
        f"{TUNE_ON_TEST_FLAG} to tune on the test set knowingly."
    )


# --------------------------------------------------------------------------- loggers
LOGGER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "WandbLogger": (("wandb",), "wandb"),
    "wandb_logger": (("wandb",), "wandb"),
    "mlflow_logger": (("mlflow",), "mlflow"),
    "MLFlowLogger": (("mlflow",), "mlflow"),
    "CometLogger": (("comet_ml",), ""),
    "NeptuneLogger": (("neptune",), ""),
}
"""Lightning logger class -> (the packages it can run on, any one of them; the extra of this
package that installs one, or ``""`` for none)."""


def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def check_logger_packages(cfg: DictConfig) -> None:
    """Every logger of ``cfg.logger`` can import the package it writes with (TensorBoard,
    Weights & Biases, MLflow, ...): checked before anything trains, so a missing package is one
    line naming the extra to install, not a ``ModuleNotFoundError`` after the teacher's run."""
    group = cfg.get("logger") or {}
    for key, entry in group.items():
        target = str(entry.get("_target_", "")) if entry else ""
        cls = target.rsplit(".", 1)[-1]
        if cls not in LOGGER_PACKAGES:
            continue
        packages, extra = LOGGER_PACKAGES[cls]
        if any(_importable(p) for p in packages):
            continue
        install = (
            f'pip install "cskd-lightning[{extra}]"' if extra else f"pip install {packages[0]}"
        )
        raise InputError(
            f"logger.{key} ({target}) needs the {' or '.join(packages)} package, which is not "
            f"installed: {install} (or choose another logger, e.g. logger=csv)."
        )
