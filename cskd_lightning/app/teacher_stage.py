"""The teacher stage: load a given teacher, reuse a cached one, or train and cache it; and the
teacher-logit cache ``teacher.logit_cache=true`` attaches."""

from __future__ import annotations

import importlib.resources
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.seed import isolate_rng
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cskd_lightning import locks
from cskd_lightning.app.environment import environment_record
from cskd_lightning.app.jobs import instantiate_group, is_global_zero, to_float
from cskd_lightning.app.run_dir import NOT_A_RESULT
from cskd_lightning.callbacks import ProgressLog
from cskd_lightning.checkpoints import extract_state_dict, load_weights, read_checkpoint
from cskd_lightning.data.device import DeviceDataModule
from cskd_lightning.errors import InputError, config_keys
from cskd_lightning.files import save_atomically, stable_hash
from cskd_lightning.loggers import RunCSVLogger
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.logit_store import check_topk
from cskd_lightning.losses import CELoss
from cskd_lightning.module import DistillationModule

log = logging.getLogger("cskd_lightning")

# Data settings that do not change what a teacher learns (left out of its cache key).
IRRELEVANT_DATA_KEYS = (
    *(k.removeprefix("data.datamodule.") for k in NOT_A_RESULT if k.startswith("data.datamodule.")),
    "eval_batch_size",
    "two_view",  # the teacher trains on the first (weak) view either way
    "augment_seed",  # the teacher's augmentation is seeded by teacher.seed (teacher_datamodule)
)
# Trainer settings that change what a teacher learns (part of its cache key); Lightning's
# debugging limits only when set, so other keys stay as they were.
TEACHER_TRAINER_KEYS = tuple(
    "precision limit_train_batches max_steps accumulate_grad_batches gradient_clip_val devices "
    "num_nodes".split()
)
DEBUG_TRAINER_KEYS = ("fast_dev_run", "overfit_batches")
# How far (points of top-1) a teacher may score from its published accuracy before the run
# warns: about what a CIFAR-100 teacher moves between seeds.
PUBLISHED_TOLERANCE_PTS = 1.0
# What a teacher's weights depend on outside its cache key: the log says when they differ.
ENVIRONMENT_KEYS = ("threads", "torch", "accelerator", "device", "deterministic")


def teacher_seed(cfg: DictConfig) -> int:
    return int(cfg.get("teacher", {}).get("seed", cfg.seed))


def teacher_cache_key(cfg: DictConfig) -> str:
    """A short hash of everything that determines the trained teacher."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in IRRELEVANT_DATA_KEYS:
        data["datamodule"].pop(key, None)
    if "seed" in data["datamodule"]:
        data["datamodule"]["seed"] = teacher_seed(cfg)
    trainer = {key: cfg.trainer.get(key) for key in TEACHER_TRAINER_KEYS}
    trainer.update({k: cfg.trainer[k] for k in DEBUG_TRAINER_KEYS if cfg.trainer.get(k)})
    model, recipe = (
        OmegaConf.to_container(cfg.pair.teacher[k], resolve=True) for k in ("model", "recipe")
    )
    payload = {"data": data, "model": model, "recipe": recipe}
    return stable_hash({**payload, "seed": teacher_seed(cfg), "trainer": trainer}, length=12)


def teacher_cache_path(cfg: DictConfig) -> Path:
    name = f"{cfg.pair.teacher.model.name}-{cfg.data.name}-seed{teacher_seed(cfg)}"
    root = Path(cfg.paths.cache_dir).expanduser().resolve()
    return root / "teachers" / f"{name}-{teacher_cache_key(cfg)}.pt"


def teacher_datamodule(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningDataModule:
    """The run's datamodule, rebuilt single-view and with ``teacher.seed`` where they differ."""
    data = cfg.data.datamodule
    # The student's augment_seed is not the teacher's (seeded by teacher.seed).
    teachers = {"two_view": False, "seed": teacher_seed(cfg), "augment_seed": None}
    overrides = {k: v for k, v in teachers.items() if k in data and data[k] != v}
    return hydra.utils.instantiate(data, **overrides) if overrides else datamodule


def _run_teacher(
    cfg: DictConfig,
    teacher: nn.Module,
    datamodule: L.LightningDataModule,
    output_dir: Path,
    train: bool = False,
) -> float | None:
    """The teacher's test accuracy, after training it (recipe and seed of the pair's teacher;
    a log in ``<output_dir>/metrics.csv``) when ``train``."""
    recipe, schedule = cfg.pair.teacher.recipe, {}
    if train:
        L.seed_everything(teacher_seed(cfg), workers=True)
        schedule = {k: hydra.utils.instantiate(recipe.get(k)) for k in ("optimizer", "scheduler")}
    module = DistillationModule(teacher, None, CELoss(), **schedule)
    callbacks = instantiate_group(cfg.get("callbacks"))
    progress = [c for c in callbacks if isinstance(c, (ProgressBar, ProgressLog))]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=progress,
        logger=RunCSVLogger(output_dir) if train else False,
        enable_checkpointing=False,
        default_root_dir=str(output_dir),
        **({"max_epochs": recipe.max_epochs} if train else {}),
    )
    if train:
        trainer.fit(module, datamodule=datamodule)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    teacher.eval()
    return to_float(results[0].get("test/acc")) if results else None


def compare_with_published(
    cfg: DictConfig, test_acc: float | None, source: str
) -> dict[str, Any] | None:
    """The teacher's test accuracy (a fraction) beside ``pair.teacher.published_acc`` (percent),
    logged (a warning beyond :data:`PUBLISHED_TOLERANCE_PTS`); ``None`` without both."""
    published = cfg.pair.teacher.get("published_acc")
    if published is None or test_acc is None:
        return None
    published = float(published)
    gap = 100.0 * float(test_acc) - published
    within = abs(gap) <= PUBLISHED_TOLERANCE_PTS
    message = "Teacher %s (%s): %.2f%% on the test set, published %.2f%% (%+.2f points)"
    args = (cfg.pair.teacher.model.name, source, 100.0 * test_acc, published, gap)
    if not within:
        message += ", more than %.0f point from it: check the checkpoint, the pair and the data "
        message += "(the split and normalisation it was trained with) before trusting the student."
        args += (PUBLISHED_TOLERANCE_PTS,)
    if is_global_zero():  # one line per run, not per process
        log.log(logging.INFO if within else logging.WARNING, message, *args)
    return {
        "published_acc": published,
        "gap_pts": round(gap, 2),
        "tolerance_pts": PUBLISHED_TOLERANCE_PTS,
        "within_tolerance": within,
    }


def build_teacher(cfg: DictConfig) -> tuple[nn.Module, Path | None]:
    """The pair's teacher, with the weights of ``teacher.ckpt_path`` when given. Its initial
    weights are drawn from ``teacher.seed`` alone (after the student's, as a run draws them), so
    whichever job of a sweep trains the shared teacher trains the same one."""
    with isolate_rng(include_cuda=False):
        L.seed_everything(teacher_seed(cfg), workers=True, verbose=False)
        hydra.utils.instantiate(cfg.pair.student.model)  # the draws a run makes before
        teacher = hydra.utils.instantiate(cfg.pair.teacher.model)
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
    built: tuple[nn.Module, Path | None],
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher with its weights and a record of where they came from: as ``built``
    (:func:`build_teacher`) with ``teacher.ckpt_path`` or ``pretrained: true``; else the cached
    teacher for this exact data/model/recipe/seed, or one trained and cached."""
    teacher, given = built
    stage_dir, datamodule = output_dir / "teacher", teacher_datamodule(cfg, datamodule)
    if given is not None or cfg.pair.teacher.get("pretrained", False):
        if given is not None:
            log.info("Teacher weights loaded from %s", given)
            source, note = str(given.resolve()), f"loaded from {given}"
        else:
            message = "Teacher %s comes with pretrained weights: no teacher training."
            log.info(message, cfg.pair.teacher.model.name)
            source, note = "pretrained", "pretrained weights"
        acc = _run_teacher(cfg, teacher, datamodule, stage_dir)
        info = {"source": source, "test_acc": acc, "cached": False}
    else:
        path = teacher_cache_path(cfg)
        # Every rank of a DDP job trains the teacher together: a lock held by one rank would
        # stall the others (docs/scaling.md, "The teacher on several nodes").
        lock = (
            locks.held(path, "training the teacher") if single_process_job(cfg) else nullcontext()
        )
        with lock:
            info, note = _cached_or_trained(cfg, teacher, datamodule, stage_dir, path)
    record = compare_with_published(cfg, info.get("test_acc"), note)
    return teacher.eval(), {**info, "published": record} if record is not None else info


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
    cfg: DictConfig, teacher: nn.Module, datamodule: Any, stage_dir: Path, path: Path
) -> tuple[dict[str, Any], str]:
    """The cached teacher's weights loaded, else the teacher trained and cached; its record."""
    if path.is_file():
        stored = read_checkpoint(path)
        teacher.load_state_dict(extract_state_dict(stored, str(path)), strict=True)
        meta = stored.get("meta", {})
        log.info("Reusing the cached teacher %s (test acc %s)", path, meta.get("test_acc"))
        trained_with, now = meta.get("environment"), environment_record(cfg)
        changed = [
            f"{k} {trained_with.get(k)!r} -> {now.get(k)!r}"
            for k in ENVIRONMENT_KEYS
            if trained_with and trained_with.get(k) != now.get(k)
        ]
        if not trained_with:
            log.info("The cached teacher records no environment (threads, torch version, device).")
        elif changed:
            log.info(
                "The cached teacher was trained in another environment (%s): reused as it is (a "
                "teacher trained now could differ in its last digits; not part of the cache key).",
                "; ".join(changed),
            )
        info = {"source": str(path), "test_acc": meta.get("test_acc"), "cached": True}
        return {**info, "environment": trained_with}, "cached, trained here"
    log.info(
        "No cached teacher for this data/model/recipe/seed in the teacher cache %s "
        "(CSKD_CACHE_DIR or paths.cache_dir moves it): training one (%s).",
        path.parent,
        path.name,
    )
    acc = _run_teacher(cfg, teacher, datamodule, stage_dir, train=True)
    environment = environment_record(cfg)
    if is_global_zero():
        key, model = teacher_cache_key(cfg), cfg.pair.teacher.model.name
        meta = {"test_acc": acc, "key": key, "model": model, "data": cfg.data.name}
        # The environment is not in the key (README, "The teacher stage").
        meta |= {"seed": teacher_seed(cfg), "environment": environment}
        # shared: the jobs of a multi-node sweep may write the same entry at once
        save_atomically({"state_dict": teacher.state_dict(), "meta": meta}, path, shared=True)
        log.info("Teacher trained (test acc %.4f) and cached at %s", acc or float("nan"), path)
    info = {"source": str(path), "test_acc": acc, "cached": False, "environment": environment}
    return info, "trained here"


def build_logit_cache(cfg: Any, datamodule: Any, loss: Any) -> TeacherLogitCache | None:
    """The cache ``teacher.logit_cache=true`` attaches (else, or for a loss without a teacher,
    ``None``); a feature method, a DataLoader datamodule or a bad top-k refused at once."""
    teacher_cfg = cfg.teacher
    if not teacher_cfg.get("logit_cache", False):
        return None
    if getattr(loss, "teacher_features", ()):
        raise InputError(
            f"distill={cfg.distill.name} needs the teacher's intermediate features, and the "
            "teacher-logit cache holds logits only: run it with teacher.logit_cache=false."
        )
    if not isinstance(datamodule, DeviceDataModule):
        data = cfg.data.name
        folder = importlib.resources.files("cskd_lightning.conf").joinpath("data")  # shipped:
        shipped = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith("_device.yaml"))
        fix = f"data={data}_device"
        if f"{data}_device" not in shipped:
            fix = "data=<name>_device (" + ", ".join(shipped) + ")"
        raise InputError(
            "teacher.logit_cache=true needs the device-resident data pipeline, whose batches "
            "carry their sample indices (the cache's row numbers), but "
            f"data={data} ({type(datamodule).__name__}) is a DataLoader datamodule: use {fix} "
            "(or teacher.logit_cache=false)."
        )
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
