"""The teacher-logit cache (cskd_lightning.logit_cache) and the per-sample augmentation numbers
it relies on (cskd_lightning.data.sample_random), on the CPU.

The end-to-end tests run the real ``cskd-train`` (a subprocess) and compare students weight by
weight: trained from a warm cache they must be bit-identical to students trained with the live
teacher (``trainer.deterministic=true``, float32 cache).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from app_helpers import compose_train, run_cli
from omegaconf import OmegaConf

from cskd_lightning.app.jobs import run_task
from cskd_lightning.app.train import train
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.data.device import SampleBatch, batch_rand_augment
from cskd_lightning.data.sample_random import SampleRandom, hash32, hash32_int
from cskd_lightning.logit_cache import LogitFile, cache_size_bytes
from cskd_lightning.module import DistillationModule

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

TINY = [
    "data=digits_device",
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=3",
    "+trainer.limit_train_batches=6",
    "trainer.deterministic=true",
    "callbacks.progress_bar=null",
]
ENV = {"OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- the numbers
def _lowbias32_numpy(x: np.ndarray) -> np.ndarray:
    """An independent ``lowbias32``: numpy ``uint32`` arithmetic, which wraps natively."""
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def test_hash_matches_wrapping_uint32_arithmetic():
    values = np.random.default_rng(0).integers(0, 2**32, size=4096, dtype=np.uint64)
    values[:3] = [0, 1, 2**32 - 1]
    expected = _lowbias32_numpy(values)
    got = hash32(torch.from_numpy(values.astype(np.int64)))
    assert np.array_equal(got.numpy().astype(np.uint32), expected)
    assert [hash32_int(int(v)) for v in values[:64]] == expected[:64].tolist()


def test_draws_are_uniform_and_depend_on_seed_epoch_and_stream():
    index = torch.arange(50_000)
    draws = SampleRandom(7, 3, index).randint(0, 10, stream=1)[:, 0]
    counts = torch.bincount(draws, minlength=10).double()
    chi2 = float(((counts - 5000.0) ** 2 / 5000.0).sum())
    assert chi2 < 30.0, counts  # 9 degrees of freedom: p < 1e-3 beyond ~27.9
    u = SampleRandom(7, 3, index).uniform(stream=1)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    base = SampleRandom(7, 3, index).bits(1, 2)
    for other in (SampleRandom(8, 3, index), SampleRandom(7, 4, index)):
        assert (other.bits(1, 2) != base).float().mean() > 0.99
    assert (SampleRandom(7, 3, index).bits(2, 2) != base).float().mean() > 0.99
    assert (base[:, 0] != base[:, 1]).float().mean() > 0.99  # draws within a stream differ


def _views_by_sample(batch_size: int, rank: int = 0, world: int = 1, **kwargs) -> dict:
    # val_split=0: the training set does not depend on the seed (a held-out split would).
    dm = DeviceDataModule(
        DigitsDataModule, batch_size=batch_size, augment=True, two_view=True, val_split=0, **kwargs
    )
    dm.trainer = SimpleNamespace(
        world_size=world,
        global_rank=rank,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    dm.with_indices = True
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(2)
    out = {}
    for batch in loader:
        assert isinstance(batch, SampleBatch) and batch.epoch == 2
        x, y = batch  # unpacks like (x, y)
        for j, i in enumerate(batch.host_index.tolist()):
            out[i] = (x[0][j], x[1][j], y[j])
    return out


def test_augmentation_of_a_sample_ignores_batch_size_order_and_world_size():
    torch.set_num_threads(1)
    small, large = _views_by_sample(16), _views_by_sample(64)
    ranks = {**_views_by_sample(32, 0, 2), **_views_by_sample(32, 1, 2)}
    other_order = _views_by_sample(64, seed=5, augment_seed=0)  # new order, same numbers
    common = set(small) & set(large) & set(ranks) & set(other_order)
    assert len(common) > 1000
    for i in common:
        for views in (large[i], ranks[i], other_order[i]):
            assert torch.equal(small[i][0], views[0]) and torch.equal(small[i][1], views[1])
    # ...and the views are random: another augment_seed changes most weak and strong views.
    reseeded = _views_by_sample(64, augment_seed=1)
    changed = [not torch.equal(small[i][1], reseeded[i][1]) for i in common & set(reseeded)]
    assert np.mean(changed) > 0.9


def test_sync_free_colour_ops_equal_the_indexed_ones():
    x = torch.rand(64, 3, 12, 12)
    rand = SampleRandom(3, 1, torch.arange(64))
    a = batch_rand_augment(x.clone(), rand, sync_free=True)
    b = batch_rand_augment(x.clone(), rand, sync_free=False)
    assert torch.equal(a, b) and not torch.equal(a, x)


# --------------------------------------------------------------------------- storage
def test_logit_file_marks_rows_done_only_when_written(tmp_path: Path):
    f = LogitFile(tmp_path / "train-e0000", n=10, views=2, classes=3, dtype="float16")
    assert LogitFile.done_rows(tmp_path / "train-e0000", 10, 2).sum() == 0
    rows = np.array([1, 4])
    f.write(rows, 1, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], dtype=np.float32))
    done = LogitFile.done_rows(tmp_path / "train-e0000", 10, 2)
    assert done.sum() == 2 and done[1, 1] and done[4, 1] and not done[1, 0]
    again = LogitFile(tmp_path / "train-e0000", n=10, views=2, classes=3, dtype="float16")
    assert again.values[4, 1].tolist() == [4.0, 5.0, 6.5]  # reopened, not re-created
    assert (tmp_path / "train-e0000.float16").stat().st_size == 10 * 2 * 3 * 2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_size_formula_is_what_the_files_take(tmp_path: Path, dtype: str):
    for epoch in range(3):
        LogitFile(tmp_path / f"train-e{epoch:04d}", n=50, views=2, classes=7, dtype=dtype)
    LogitFile(tmp_path / "test", n=20, views=1, classes=7, dtype=dtype)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk == cache_size_bytes(3, 50, 2, 7, dtype, n_eval=20)


# --------------------------------------------------------------------------- refusals
def test_the_dataloader_path_is_refused_in_one_line(tmp_path, capsys):
    cfg = compose_train(["data=digits", "teacher.logit_cache=true"], tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_task(train, cfg)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "data=digits_device" in lines[0] and "teacher.logit_cache" in lines[0]
    assert not (tmp_path / "cache" / "teachers").exists()  # refused before the teacher stage


# --------------------------------------------------------------------------- end to end
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cskd_lightning.app.train",
            *common,
            "teacher.logit_cache=true",
            f"hydra.run.dir={killed}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


@pytest.mark.slow
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
