"""The teacher-logit cache (cskd_lightning.logit_cache) and the per-sample augmentation numbers
it relies on (cskd_lightning.data.sample_random), on the CPU: the numbers, the files, the
refusals. (Students trained from the cache, through the real command:
tests/integration/test_logit_cache_runs.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import compose_train, user_error
from helpers import process_view

from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.data.device import SampleBatch, batch_rand_augment
from cskd_lightning.data.sample_random import SampleRandom, hash32, hash32_int
from cskd_lightning.logit_cache import LogitFile, cache_size_bytes

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
