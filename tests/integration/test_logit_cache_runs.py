"""The teacher-logit cache end to end, through the real ``cskd-train`` (a subprocess): students
trained from a warm cache are compared weight by weight with students trained with the live
teacher (``trainer.deterministic=true``, float32 cache) and must be bit-identical; a second run
never runs the teacher; a SIGKILLed run leaves a partial cache the next run completes; DDP
processes store their own rows. (The cache's numbers and files: tests/unit/test_logit_cache.py.)
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import compose_train, run_cli, start_cli
from omegaconf import OmegaConf

from cskd_lightning.app.train import train
from cskd_lightning.module import DistillationModule

pytestmark = pytest.mark.timeout(300)

TINY = [
    "data=digits_device",
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=3",
    "+trainer.limit_train_batches=6",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
]


ENV = {"OMP_NUM_THREADS": "1"}


def _student(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "student.pt", weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _student(a), _student(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{a.name} vs {b.name}: {key}"


def _jobs(sweep: Path) -> dict[tuple[str, bool], Path]:
    out = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "config.yaml").is_file()):
        cfg = OmegaConf.load(job / "config.yaml")
        out[(cfg.distill.name, bool(cfg.teacher.logit_cache))] = job
    return out


def _status(run_dir: Path) -> str:
    text = (run_dir / "train.log").read_text()
    found = re.findall(r"Teacher-logit cache (hit|miss|partial)", text)
    assert len(found) == 1, text[-2000:]
    return found[0]


def test_warm_cache_students_are_bit_identical_to_live_teacher_students(tmp_path: Path):
    """kd, cskd_cswt (batch-level CSWT) and cskd_full (two views), with the real command."""
    common = [*TINY, f"paths.cache_dir={tmp_path / 'cache'}"]
    first = tmp_path / "sweep1"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            *common,
            "distill=kd,cskd_cswt,cskd_full",
            "teacher.logit_cache=true,false",
            f"hydra.sweep.dir={first}",
        ],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = _jobs(first)
    assert len(jobs) == 6
    # kd ran first and stored the single-view logits; cskd_cswt read them.
    assert _status(jobs["kd", True]) == "miss"
    assert _status(jobs["cskd_cswt", True]) == "hit"
    assert _status(jobs["cskd_full", True]) == "miss"
    second = tmp_path / "sweep2"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            *common,
            "distill=kd,cskd_full",
            "teacher.logit_cache=true",
            f"hydra.sweep.dir={second}",
        ],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warm = _jobs(second)
    for method in ("kd", "cskd_full"):
        assert _status(warm[method, True]) == "hit"
        _same_weights(jobs[method, False], warm[method, True])
    for method in ("kd", "cskd_cswt", "cskd_full"):
        _same_weights(jobs[method, False], jobs[method, True])


class _Count:
    def __init__(self) -> None:
        self.train = self.eval = 0


def test_a_second_run_hits_and_never_runs_the_teacher(tmp_path, monkeypatch, caplog):
    calls = _Count()
    original = DistillationModule.forward_teacher

    def counting(self, x):
        if self.training:
            calls.train += 1
        else:
            calls.eval += 1
        return original(self, x)

    monkeypatch.setattr(DistillationModule, "forward_teacher", counting)
    overrides = [*TINY, "distill=cskd_cswt", "teacher.logit_cache=true"]
    caplog.set_level(logging.INFO, logger="cskd_lightning")
    train(compose_train(overrides, tmp_path / "one"))
    assert calls.train == 3 * 6 and calls.eval > 0  # 3 epochs x 6 batches, then val and test
    assert "Teacher-logit cache miss" in caplog.text
    shared = [f"paths.cache_dir={tmp_path / 'one' / 'cache'}"]  # same cache, new run dir
    calls.train = calls.eval = 0
    caplog.clear()
    with_cache = compose_train([*overrides, *shared], tmp_path / "two")
    train(with_cache)
    assert calls.train == 0 and calls.eval == 0, vars(calls)
    assert "Teacher-logit cache hit" in caplog.text
    assert "18 training batches read from it, 0 computed" in caplog.text


@pytest.mark.long
def test_a_killed_run_leaves_a_partial_cache_that_the_next_run_completes(tmp_path: Path):
    """SIGKILL a real run once two epochs are stored; the next run finds a partial cache,
    reads those epochs, computes the rest, and its student is the live-teacher student."""
    common = [
        *(o for o in TINY if "limit_train_batches" not in o),
        "pair.student.recipe.max_epochs=6",
        "+trainer.limit_train_batches=8",
        "distill=kd",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    killed = tmp_path / "killed"
    args = [*common, "teacher.logit_cache=true", f"hydra.run.dir={killed}"]
    proc = start_cli(["cskd-train", *args], cwd=tmp_path, **ENV)
    cache = tmp_path / "cache" / "teacher_logits"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(cache.glob("*/train-e*.done"))) >= 3:  # epoch 2 is being written
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (killed / "student.pt").exists()
    resumed = tmp_path / "rerun"
    done = run_cli(
        ["cskd-train", *common, "teacher.logit_cache=true", f"hydra.run.dir={resumed}"],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _status(resumed) == "partial"
    log_text = (resumed / "train.log").read_text()
    assert re.search(r"partial \(epochs 0-\d+ stored, \d+-5 computed\)", log_text), log_text
    records = sorted(cache.glob("*/train-e*.done"))
    assert len(records) == 6
    rows = 8 * 64
    for record in records:
        assert int(np.fromfile(record, dtype=np.uint8).sum()) == rows, record.name
    live = tmp_path / "live"
    done = run_cli(["cskd-train", *common, f"hydra.run.dir={live}"], cwd=tmp_path, **ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_weights(live, resumed)


@pytest.mark.long
def test_ddp_processes_store_their_own_rows_for_a_single_process_run(tmp_path: Path):
    """2 CPU processes (gloo) fill the cache, each with its shard; a 1-process run of the same
    data then finds every row it needs (the augmentation ignores the world size)."""
    common = [*TINY, "distill=cskd_full", "teacher.logit_cache=true"]
    common.append(f"paths.cache_dir={tmp_path / 'cache'}")
    done = run_cli(
        ["cskd-train", *common, "trainer=ddp_sim", f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "ddp").rglob("*.log")) + done.stdout
    for rank in (0, 1):
        assert f"0 training batches read from it, 18 computed by the teacher (rank {rank})" in logs
    # The teacher cache is keyed by the process count: hand the 2-process teacher over.
    (teacher,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    single = tmp_path / "single"
    done = run_cli(
        ["cskd-train", *common, f"teacher.ckpt_path={teacher}", f"hydra.run.dir={single}"],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _status(single) == "hit"


def test_a_topk_cache_is_stored_then_read_by_the_real_command(tmp_path: Path):
    """One ``cskd-train -m`` sweep: a top-3 run stores its cache (miss), a float32 run is not
    answered by it (miss, its own cache), a second top-3 run reads it (hit, the teacher never
    runs on a training batch) and trains the student of the first, bit for bit (both train on
    the rebuilt logits), unlike the float32 student's."""
    sweep = tmp_path / "sweep"
    done = run_cli(
        [
            "cskd-train",
            "-m",
            *(o for o in TINY if "max_epochs" not in o and "limit_train" not in o),
            "pair.teacher.recipe.max_epochs=1",
            "pair.student.recipe.max_epochs=2",
            "+trainer.limit_train_batches=4",
            "distill=kd",
            "teacher.logit_cache=true",
            "teacher.logit_cache_dtype=topk,float32,topk",
            "teacher.logit_cache_topk=3",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stored, exact, read = (sweep / str(i) for i in range(3))
    assert [_status(d) for d in (stored, exact, read)] == ["miss", "miss", "hit"]
    log_text = (read / "train.log").read_text()
    assert "(top-3; " in log_text and "8 training batches read from it, 0 computed" in log_text
    _same_weights(stored, read)
    a, b = _student(stored), _student(exact)
    assert any(not torch.equal(a[key], b[key]) for key in a)
    (topk_dir,) = {p.parent for p in (tmp_path / "cache").rglob("*.topk-values")}
    assert sorted(p.name for p in topk_dir.glob("train-e*.topk-*")) == [
        f"train-e000{e}.topk-{part}" for e in (0, 1) for part in ("index", "values")
    ]
    assert (topk_dir / "test.float32").is_file()  # the evaluation splits are stored exact


def test_a_folded_teacher_run_trains_and_keys_its_own_cache(tmp_path: Path):
    """``module.fold_teacher_batchnorm=true`` through the real command: the run trains from the
    folded teacher and stores its logits under a key that says so (a plain run never reads
    them: tests/unit/test_teacher_inference.py)."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    done = run_cli(
        [
            "cskd-train",
            *TINY,
            "distill=cskd_cswt",
            "teacher.logit_cache=true",
            "module.fold_teacher_batchnorm=true",
            f"paths.cache_dir={cache}",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        **ENV,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert OmegaConf.load(run_dir / "config.yaml").module.fold_teacher_batchnorm is True
    (meta,) = (cache / "teacher_logits").glob("*/meta.json")
    assert '"fold_teacher_batchnorm": true' in meta.read_text()
    assert _status(run_dir) == "miss"
