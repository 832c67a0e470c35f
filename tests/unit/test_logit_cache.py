"""The teacher-logit cache (cskd_lightning.logit_cache) and the per-sample augmentation numbers
it relies on (cskd_lightning.data.sample_random), on the CPU: the numbers, the files, the
refusals. (Students trained from the cache, through the real command:
tests/integration/test_logit_cache_runs.py.)
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from app_helpers import compose_train, user_error
from helpers import process_view, quiet_trainer

from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.data.device import SampleBatch, batch_rand_augment
from cskd_lightning.data.sample_random import SampleRandom, hash32, hash32_int
from cskd_lightning.logit_cache import LogitFile, TeacherLogitCache, cache_size_bytes
from cskd_lightning.losses import KDLoss
from cskd_lightning.models import create_model
from cskd_lightning.module import DistillationModule

pytestmark = pytest.mark.timeout(300)


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
    dm.trainer = process_view(rank, world)
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
    line = user_error(compose_train(["data=digits", "teacher.logit_cache=true"], tmp_path), capsys)
    assert "data=digits_device" in line and "teacher.logit_cache" in line
    assert not (tmp_path / "cache" / "teachers").exists()  # refused before the teacher stage


# --------------------------------------------------------------------------- end to end


# --------------------------------------------------------------------------- key and rows
def _digits_teacher(init_seed: int) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    return create_model("digits_teacher", num_classes=10, in_channels=1)


def _fit(
    teacher: torch.nn.Module,
    cache_root: Path | None,
    batch_size: int,
    batches: int,
    **data_kwargs,
) -> tuple[DistillationModule, TeacherLogitCache | None]:
    """One deterministic epoch of KD on the digits' device pipeline (``batches`` batches of
    ``batch_size``), with the logit cache in ``cache_root`` (``None``: the live teacher)."""
    L.seed_everything(0, workers=True)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    module = DistillationModule(student, teacher, KDLoss())
    dm = DeviceDataModule(DigitsDataModule(batch_size=batch_size, augment=True), **data_kwargs)
    cache = TeacherLogitCache(cache_root) if cache_root is not None else None
    quiet_trainer(
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        deterministic=True,
        callbacks=[cache] if cache is not None else [],
    ).fit(module, datamodule=dm)
    return module, cache


def test_another_teacher_or_augmentation_never_reads_the_stored_logits(tmp_path: Path):
    """The key holds the teacher's weights and the augmentation settings: a cache stored by
    one teacher is not read by a teacher of the same class with other weights, nor under
    another ``augment_seed`` or crop; the same teacher and settings do read it (so the test
    can fail)."""
    root = tmp_path / "cache"
    _, stored = _fit(_digits_teacher(0), root, batch_size=32, batches=3)
    assert stored.stats == {"cached": 0, "computed": 3}
    _, again = _fit(_digits_teacher(0), root, batch_size=32, batches=3)
    assert again.stats == {"cached": 3, "computed": 0} and again.directory == stored.directory
    others = {
        "teacher with other weights": dict(teacher=_digits_teacher(1)),
        "augment_seed=1": dict(augment_seed=1),
        "crop_padding=0": dict(crop_padding=0),
        "flip=true": dict(flip=True),
    }
    for what, change in others.items():
        teacher = change.pop("teacher", _digits_teacher(0))
        _, other = _fit(teacher, root, batch_size=32, batches=3, **change)
        assert other.stats == {"cached": 0, "computed": 3}, what
        assert other.directory != stored.directory, what


def test_a_batch_partly_stored_is_computed_and_the_student_is_the_live_one(tmp_path: Path):
    """A run stores rows 0-127 of epoch 0's order (2 batches of 64); a run with batches of 48
    and more batches (rows 0-191) reads its first two batches (rows 0-95), computes the third
    (rows 96-143: half stored, half not) and the fourth (none stored), and its student is
    bit-identical to the live-teacher student. Answering a partly stored batch from the cache
    would hand the loss the zeros of the rows never written."""
    root = tmp_path / "cache"
    _fit(_digits_teacher(0), root, batch_size=64, batches=2)
    cached, cache = _fit(_digits_teacher(0), root, batch_size=48, batches=4)
    live, _ = _fit(_digits_teacher(0), None, batch_size=48, batches=4)
    a, b = cached.student.state_dict(), live.student.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert cache.stats == {"cached": 2, "computed": 2}
