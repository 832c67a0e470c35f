"""The teacher stage: load a given teacher, reuse a cached one, or train and cache it; and
the teacher-logit cache ``teacher.logit_cache=true`` attaches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cskd_lightning import locks
from cskd_lightning.app.environment import environment_record
from cskd_lightning.app.jobs import (
    instantiate_group,
    is_global_zero,
    optional_instantiate,
    to_float,
)
from cskd_lightning.callbacks import ProgressLog
from cskd_lightning.checkpoints import extract_state_dict, load_weights, read_checkpoint
from cskd_lightning.data.device import DeviceDataModule
from cskd_lightning.errors import InputError, config_keys
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.logit_store import check_topk
from cskd_lightning.losses import CELoss
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")

IRRELEVANT_DATA_KEYS = (
    "data_dir",
    "download",
    "num_workers",
    "pin_memory",
    "eval_batch_size",
    "two_view",  # the teacher trains on the first (weak) view either way
    "augment_seed",  # the teacher's augmentation is seeded by teacher.seed (teacher_datamodule)
)
"""Data settings that do not change what a teacher learns (left out of its cache key)."""

TEACHER_TRAINER_KEYS = (
    "precision",
    "limit_train_batches",
    "max_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "devices",
    "num_nodes",
)
"""Trainer settings that change what a teacher learns (part of its cache key)."""

DEBUG_TRAINER_KEYS = ("fast_dev_run", "overfit_batches")
"""Lightning's debugging limits (``debug=fdr``, ``debug=overfit``) change what a teacher learns
too; they join the cache key only when set, so the keys of other runs stay as they were."""


def teacher_cache_key(cfg: DictConfig) -> str:
    """A short hash of everything that determines the trained teacher.

    The data (minus paths and loader settings), the teacher model, its recipe, the seed and the
    trainer settings that change training (precision, batch limits, process count, ...).
    """
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in IRRELEVANT_DATA_KEYS:
        data.get("datamodule", {}).pop(key, None)
    if "seed" in data.get("datamodule", {}):
        data["datamodule"]["seed"] = teacher_seed(cfg)
    payload = {
        "data": data,
        "model": OmegaConf.to_container(cfg.pair.teacher.model, resolve=True),
        "recipe": OmegaConf.to_container(cfg.pair.teacher.recipe, resolve=True),
        "seed": teacher_seed(cfg),
        "trainer": {key: cfg.trainer.get(key) for key in TEACHER_TRAINER_KEYS},
    }
    payload["trainer"].update({k: cfg.trainer[k] for k in DEBUG_TRAINER_KEYS if cfg.trainer.get(k)})
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def teacher_seed(cfg: DictConfig) -> int:
    """``teacher.seed`` (defaults to the run's ``seed``)."""
    return int(cfg.get("teacher", {}).get("seed", cfg.seed))


def teacher_cache_path(cfg: DictConfig) -> Path:
    name = (
        f"{cfg.pair.teacher.model.name}-{cfg.data.name}-seed{teacher_seed(cfg)}-"
        f"{teacher_cache_key(cfg)}"
    )
    return Path(cfg.paths.cache_dir).expanduser().resolve() / "teachers" / f"{name}.pt"


def teacher_datamodule(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningDataModule:
    """The run's datamodule, rebuilt single-view and with ``teacher.seed`` where they differ.

    The teacher learns from the first view alone, so it needs no strong views; a fixed
    ``teacher.seed`` also fixes the teacher's data split, order and augmentation (a student's
    ``augment_seed`` does not apply to it).
    """
    overrides: dict[str, Any] = {}
    if cfg.data.datamodule.get("two_view", False):
        overrides["two_view"] = False
    if "seed" in cfg.data.datamodule and cfg.data.datamodule.seed != teacher_seed(cfg):
        overrides["seed"] = teacher_seed(cfg)
    if cfg.data.datamodule.get("augment_seed") is not None:
        overrides["augment_seed"] = None  # the student's augment_seed is not the teacher's
    return hydra.utils.instantiate(cfg.data.datamodule, **overrides) if overrides else datamodule


def _plain_trainer(cfg: DictConfig, output_dir: Path, max_epochs: int | None = None) -> L.Trainer:
    """A trainer like the run's, without checkpoints, for the teacher stage. Only a training
    (``max_epochs`` given) writes a log (``<output_dir>/metrics.csv``); a test of a ready
    teacher leaves the directory as it is."""
    callbacks = [
        c
        for c in instantiate_group(cfg.get("callbacks"))
        if type(c).__name__.endswith("ProgressBar") or isinstance(c, ProgressLog)
    ]
    overrides: dict[str, Any] = {
        "callbacks": callbacks,
        "logger": RunCSVLogger(output_dir) if max_epochs is not None else False,
        "enable_checkpointing": False,
        "default_root_dir": str(output_dir),
    }
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    return hydra.utils.instantiate(cfg.trainer, **overrides)


def evaluate_teacher(
    cfg: DictConfig, teacher: nn.Module, datamodule: L.LightningDataModule, output_dir: Path
) -> float | None:
    """The teacher's test accuracy (a fraction), measured with a plain test loop."""
    module = DistillationModule(teacher, None, CELoss())
    trainer = _plain_trainer(cfg, output_dir)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    return to_float(results[0].get("test/acc")) if results else None


PUBLISHED_TOLERANCE_PTS = 1.0
"""How far (in points of top-1) a teacher may score from its published accuracy before the run
warns: one point, about what a CIFAR-100 teacher moves between seeds."""


def compare_with_published(
    cfg: DictConfig, test_acc: float | None, source: str
) -> dict[str, Any] | None:
    """The teacher's test accuracy beside the one published for the pair's teacher.

    ``pair.teacher.published_acc`` (percent; the pair config names its source) against
    ``test_acc`` (a fraction, from this data's test split). Logs the comparison, as a warning
    when they differ by more than :data:`PUBLISHED_TOLERANCE_PTS`: a wrong checkpoint, another
    normalisation or a damaged file shows here, before the student trains. Returns the record
    ``{"published_acc", "gap_pts", "tolerance_pts", "within_tolerance"}`` for ``summary.json``,
    or ``None`` when the pair publishes no accuracy or the test gave none.
    """
    published = cfg.pair.teacher.get("published_acc")
    if published is None or test_acc is None:
        return None
    published = float(published)
    gap = 100.0 * float(test_acc) - published
    within = abs(gap) <= PUBLISHED_TOLERANCE_PTS
    message = "Teacher %s (%s): %.2f%% on the test set, published %.2f%% (%+.2f points)"
    args = (cfg.pair.teacher.model.name, source, 100.0 * test_acc, published, gap)
    if not is_global_zero():
        pass  # one line per run, not per process
    elif within:
        log.info(message, *args)
    else:
        log.warning(
            message + ", more than %.0f point from it: check the checkpoint, the pair and the "
            "data (the split and normalisation it was trained with) before trusting the student.",
            *args,
            PUBLISHED_TOLERANCE_PTS,
        )
    return {
        "published_acc": published,
        "gap_pts": round(gap, 2),
        "tolerance_pts": PUBLISHED_TOLERANCE_PTS,
        "within_tolerance": within,
    }


def train_teacher(
    cfg: DictConfig, teacher: nn.Module, datamodule: L.LightningDataModule, output_dir: Path
) -> float | None:
    """Train ``teacher`` with the pair's teacher recipe and seed; return its test accuracy."""
    L.seed_everything(teacher_seed(cfg), workers=True)
    recipe = cfg.pair.teacher.recipe
    module = DistillationModule(
        teacher,
        None,
        CELoss(),
        optimizer=optional_instantiate(recipe.get("optimizer")),
        scheduler=optional_instantiate(recipe.get("scheduler")),
    )
    trainer = _plain_trainer(cfg, output_dir, max_epochs=recipe.max_epochs)
    trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    teacher.eval()
    return to_float(results[0].get("test/acc")) if results else None


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _initial_teacher(cfg: DictConfig) -> nn.Module:
    """The pair's teacher model, its initial weights drawn from ``teacher.seed`` alone.

    They are drawn as a run with ``seed=<teacher.seed>`` draws them (seeded, after the
    student's), whatever the run's own seed, so whichever job of a sweep trains the shared
    teacher trains the same one. The global random states are left as they were.
    """
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        L.seed_everything(teacher_seed(cfg), workers=True, verbose=False)
        hydra.utils.instantiate(cfg.pair.student.model)  # the draws a run makes before
        return hydra.utils.instantiate(cfg.pair.teacher.model)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def build_teacher(cfg: DictConfig) -> tuple[nn.Module, Path | None]:
    """The pair's teacher model, with the weights of ``teacher.ckpt_path`` when one is given
    (read and checked: a bad file fails here, before anything is written or trained)."""
    teacher = _initial_teacher(cfg)
    given = cfg.teacher.get("ckpt_path")
    if not given:
        return teacher, None
    path = Path(given).expanduser()
    trust = bool(cfg.teacher.get("trust_checkpoint", False))
    load_weights(teacher, path, trust, trust_flag="teacher.trust_checkpoint=true")
    return teacher, path


def prepare_teacher(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    output_dir: Path,
    built: tuple[nn.Module, Path | None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Give the pair's teacher its weights; return it with a record of where they came from.

    ``built``: the result of :func:`build_teacher` (made here when omitted). A teacher loaded
    from ``teacher.ckpt_path`` or one that is ``pretrained: true`` (torchvision weights) is
    used as built. Else reuse the cached teacher for this exact data/model/recipe/seed, or
    train one and cache it.
    """
    teacher, given = built if built is not None else build_teacher(cfg)
    stage_dir = output_dir / "teacher"
    datamodule = teacher_datamodule(cfg, datamodule)
    if given is not None:
        log.info("Teacher weights loaded from %s", given)
        acc = evaluate_teacher(cfg, teacher, datamodule, stage_dir)
        info = {"source": str(given.resolve()), "test_acc": acc, "cached": False}
        return teacher.eval(), _with_published(cfg, info, f"loaded from {given}")
    if cfg.pair.teacher.get("pretrained", False):
        log.info(
            "Teacher %s comes with pretrained weights: no teacher training.",
            cfg.pair.teacher.model.name,
        )
        acc = evaluate_teacher(cfg, teacher, datamodule, stage_dir)
        info = {"source": "pretrained", "test_acc": acc, "cached": False}
        return teacher.eval(), _with_published(cfg, info, "pretrained weights")

    path = teacher_cache_path(cfg)
    if not single_process_job(cfg):
        # Every rank of a DDP job trains the teacher together: a lock held by one rank would
        # stall the others (see docs/scaling.md, "The teacher on several nodes").
        return _cached_or_trained(cfg, teacher, datamodule, stage_dir, path)
    with locks.held(path, "training the teacher"):
        return _cached_or_trained(cfg, teacher, datamodule, stage_dir, path)


def single_process_job(cfg: DictConfig) -> bool:
    """Whether the job runs in one process (``trainer.devices * trainer.num_nodes == 1`` and
    no launcher started other ranks)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return False
    try:
        devices = int(cfg.trainer.get("devices", 1))
        nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    except (TypeError, ValueError):  # "auto", a list of device ids
        return False
    return devices * nodes == 1


def _cached_or_trained(
    cfg: DictConfig,
    teacher: nn.Module,
    datamodule: L.LightningDataModule,
    stage_dir: Path,
    path: Path,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the cached teacher ``path``, or train the teacher and cache it there."""
    if path.is_file():
        stored = read_checkpoint(path)
        teacher.load_state_dict(extract_state_dict(stored, str(path)), strict=True)
        meta = stored.get("meta", {}) if isinstance(stored, dict) else {}
        log.info("Reusing the cached teacher %s (test acc %s)", path, meta.get("test_acc"))
        trained_with = meta.get("environment")
        _note_environment_change(trained_with, environment_record(cfg))
        info = {
            "source": str(path),
            "test_acc": meta.get("test_acc"),
            "cached": True,
            "environment": trained_with,
        }
        return teacher.eval(), _with_published(cfg, info, "cached, trained here")

    log.info(
        "No cached teacher for this data/model/recipe/seed in the teacher cache %s "
        "(CSKD_CACHE_DIR or paths.cache_dir moves it): training one (%s).",
        path.parent,
        path.name,
    )
    acc = train_teacher(cfg, teacher, datamodule, stage_dir)
    environment = environment_record(cfg)
    if is_global_zero():
        meta = {
            "test_acc": acc,
            "key": teacher_cache_key(cfg),
            "model": cfg.pair.teacher.model.name,
            "data": cfg.data.name,
            "seed": teacher_seed(cfg),
            # Not in the key: what else the weights depend on (README, "The teacher stage").
            "environment": environment,
        }
        _save_atomically({"state_dict": teacher.state_dict(), "meta": meta}, path)
        log.info("Teacher trained (test acc %.4f) and cached at %s", acc or float("nan"), path)
    info = {"source": str(path), "test_acc": acc, "cached": False, "environment": environment}
    return teacher.eval(), _with_published(cfg, info, "trained here")


def _with_published(cfg: DictConfig, info: dict[str, Any], source: str) -> dict[str, Any]:
    """``info`` with the comparison of :func:`compare_with_published` under ``"published"``."""
    record = compare_with_published(cfg, info.get("test_acc"), source)
    return {**info, "published": record} if record is not None else info


ENVIRONMENT_KEYS = ("threads", "torch", "accelerator", "device", "deterministic")
"""What a teacher's weights depend on that is not in its cache key (README, "The teacher
stage"): a cached teacher is reused whatever these were, and the log says when they differ."""


def _note_environment_change(trained_with: dict[str, Any] | None, now: dict[str, Any]) -> None:
    if not trained_with:
        log.info("The cached teacher records no environment (threads, torch version, device).")
        return
    changed = [
        f"{k} {trained_with.get(k)!r} -> {now.get(k)!r}"
        for k in ENVIRONMENT_KEYS
        if trained_with.get(k) != now.get(k)
    ]
    if changed:
        log.info(
            "The cached teacher was trained in another environment (%s): reused as it is (a "
            "teacher trained now could differ in its last digits; not part of the cache key).",
            "; ".join(changed),
        )


def build_logit_cache(cfg: Any, datamodule: Any, loss: Any) -> TeacherLogitCache | None:
    """The cache ``cskd-train`` attaches with ``teacher.logit_cache=true`` (else ``None``).

    Refuses a DataLoader datamodule with one line (``ValueError``) before anything is trained;
    returns ``None`` for a loss that needs no teacher. ``teacher.logit_cache_dtype=topk`` keeps
    ``teacher.logit_cache_topk`` classes per training row (refused in one line unless
    ``1 <= k < data.num_classes``). The cache lives in
    ``<paths.cache_dir>/teacher_logits/`` (``CSKD_CACHE_DIR`` moves it), next to the teachers.
    """
    teacher_cfg = cfg.get("teacher", {}) or {}
    if not teacher_cfg.get("logit_cache", False):
        return None
    if getattr(loss, "teacher_features", ()):
        raise InputError(
            f"distill={cfg.distill.name} needs the teacher's intermediate features, and the "
            "teacher-logit cache holds logits only: run it with teacher.logit_cache=false."
        )
    if not isinstance(datamodule, DeviceDataModule):
        raise InputError(_refusal(str(cfg.data.get("name", "?")), datamodule))
    if not getattr(loss, "requires_teacher", True):
        log.info("Teacher-logit cache not used: distill=%s needs no teacher.", cfg.distill.name)
        return None
    root = Path(str(cfg.paths.cache_dir)).expanduser().resolve() / "teacher_logits"
    name = f"{cfg.pair.teacher.model.name}-{cfg.data.name}"
    dtype = str(teacher_cfg.get("logit_cache_dtype", "float32"))
    topk = teacher_cfg.get("logit_cache_topk", 10) if dtype == "topk" else None
    with config_keys({"dtype": "teacher.logit_cache_dtype", "topk": "teacher.logit_cache_topk"}):
        if topk is not None:  # checked against the class count before the teacher trains
            topk = check_topk(topk, int(cfg.data.num_classes))
        return TeacherLogitCache(root, name, dtype, topk)


DEVICE_DATA = (
    "digits_device",
    "fashion_mnist_device",
    "fashion_mnist_pairs_device",
    "cifar100_device",
)


def _refusal(data_name: str, datamodule: Any) -> str:
    """The one-line refusal of a DataLoader datamodule, naming the device config to use."""
    fix = f"data={data_name}_device"
    if f"{data_name}_device" not in DEVICE_DATA:
        fix = "data=<name>_device (" + ", ".join(DEVICE_DATA) + ")"
    return (
        "teacher.logit_cache=true needs the device-resident data pipeline, whose batches carry "
        "their sample indices (the cache's row numbers), but "
        f"data={data_name} ({type(datamodule).__name__}) is a DataLoader datamodule: use {fix} "
        "(or teacher.logit_cache=false)."
    )
