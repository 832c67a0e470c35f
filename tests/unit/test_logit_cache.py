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
from cskd_lightning.data.batch_augment import batch_rand_augment
from cskd_lightning.data.device import SampleBatch
from cskd_lightning.data.sample_random import SampleRandom, hash32, hash32_int
from cskd_lightning.errors import InputError
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.logit_store import (
    LogitFile,
    cache_size_bytes,
    index_dtype,
    topk_compress,
    topk_expand,
)
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


@pytest.mark.parametrize(
    ("dtype", "topk", "classes"),
    [("float32", None, 7), ("float16", None, 7), ("topk", 3, 7), ("topk", 5, 40000)],
)
def test_the_size_formula_is_what_the_files_take(tmp_path: Path, dtype, topk, classes):
    for epoch in range(3):
        LogitFile(tmp_path / f"train-e{epoch:04d}", 50, 2, classes, dtype, topk)
    # A top-k cache stores its evaluation splits exact (float32).
    LogitFile(tmp_path / "test", 20, 1, classes, "float32" if topk else dtype)
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk == cache_size_bytes(3, 50, 2, classes, dtype, n_eval=20, topk=topk)
    if topk:  # k + 1 float16 values, k indices of 2 (C <= 32767) or 4 bytes, 1 done byte
        per_row = 2 * (topk + 1) + topk * (2 if classes <= 32767 else 4) + 1
        assert on_disk == 3 * 50 * 2 * per_row + 20 * (classes * 4 + 1)


# --------------------------------------------------------------------------- top-k
def _reference_topk(z: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """An independent float64 top-k record of ``z`` ``(B, C)``: the classes of the ``k``
    largest logits, the teacher's probabilities at T = 1 and the mass left to the others."""
    z = z.astype(np.float64)
    order = np.argsort(-z, axis=1, kind="stable")[:, :k]
    shifted = z - z.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    top_mass = np.take_along_axis(p, order, axis=1).sum(axis=1)
    others = np.ones_like(z, dtype=bool)
    np.put_along_axis(others, order, False, axis=1)
    rest = np.array([np.log(np.exp(row[m]).sum()) for row, m in zip(z, others, strict=True)])
    return {
        "order": order,
        "p": p,
        "rest_mass": 1.0 - top_mass,
        "fill": rest - np.log(z.shape[1] - k),
        "others": others,
    }


def _softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("classes", "k", "scale"),
    [(100, 10, 3.0), (100, 5, 8.0), (10, 1, 2.0), (10, 9, 4.0), (1000, 10, 5.0)],
)
def test_topk_reconstruction_against_a_float64_computation(classes, k, scale):
    """The rebuilt logits keep the top-k logits (rounded to float16), give every other class
    the same logit, and their softmax at T = 1 gives the other classes the teacher's remaining
    mass spread evenly; the argmax is kept."""
    rng = np.random.default_rng(classes + k)
    z = (rng.standard_normal((256, classes)) * scale).astype(np.float32)
    ref = _reference_topk(z, k)
    values, index = topk_compress(torch.from_numpy(z), k)
    assert values.shape == (256, k + 1) and values.dtype == torch.float16
    assert index.shape == (256, k)
    assert np.array_equal(index.numpy(), ref["order"])  # the k largest, in descending order
    z_hat = topk_expand(values, index, classes)
    assert z_hat.shape == (256, classes) and z_hat.dtype == torch.float32
    z_hat = z_hat.numpy().astype(np.float64)
    # The top-k entries: the teacher's logits, exact up to float16.
    top = np.take_along_axis(z_hat, ref["order"], axis=1)
    expected_top = np.take_along_axis(z, ref["order"], axis=1).astype(np.float16)
    assert np.array_equal(top, expected_top.astype(np.float64))
    # The others: one value per row, the float64 fill up to one float16 step.
    rest = z_hat[ref["others"]].reshape(256, classes - k)
    assert np.all(rest == rest[:, :1])
    step = np.abs(np.spacing(ref["fill"].astype(np.float16))).astype(np.float64)
    assert np.all(np.abs(rest[:, 0] - ref["fill"]) <= step)
    # At T = 1: top-k probabilities and the remaining mass spread evenly over C - k classes.
    p_hat = _softmax64(z_hat)
    tol = 4 * np.abs(np.spacing(np.float16(scale * 5)))  # float16 error of the log-odds
    even = ref["rest_mass"] / (classes - k)
    others_p = p_hat[ref["others"]].reshape(256, classes - k)
    np.testing.assert_allclose(others_p, np.repeat(even[:, None], classes - k, 1), rtol=tol)
    top_p = np.take_along_axis(p_hat, ref["order"], axis=1)
    np.testing.assert_allclose(top_p, np.take_along_axis(ref["p"], ref["order"], 1), rtol=tol)
    np.testing.assert_allclose(p_hat.sum(axis=1), 1.0, rtol=1e-12)
    # The argmax is the teacher's where float16 keeps the top two apart; where it rounds them
    # to one value, it is one of the tied classes.
    two = np.sort(z, axis=1)[:, -2:].astype(np.float16)
    apart = two[:, 1] > two[:, 0]
    assert apart.mean() > 0.9
    assert np.array_equal(z_hat.argmax(axis=1)[apart], z.argmax(axis=1)[apart])
    chosen = np.take_along_axis(z, z_hat.argmax(axis=1)[:, None], axis=1)[:, 0]
    assert np.array_equal(chosen.astype(np.float16), two[:, 1])


def test_topk_of_a_confident_teacher_keeps_a_tiny_remaining_mass():
    """A remaining mass far below float32's epsilon next to 1 is kept (the fill is a
    log-sum-exp of the other logits, not log(1 - sum of the top-k probabilities))."""
    z = torch.full((1, 50), -30.0)
    z[0, 7] = 30.0
    values, index = topk_compress(z, 1)
    p_hat = _softmax64(topk_expand(values, index, 50).numpy())
    assert index.item() == 7
    expected = np.exp(-60.0)  # each other class: exp(-30 - 30) / (1 + 49 exp(-60))
    np.testing.assert_allclose(p_hat[0, :7], expected, rtol=1e-3)


def test_topk_indices_are_int16_up_to_32767_classes(tmp_path: Path):
    assert index_dtype(32767) == np.int16 and index_dtype(32768) == np.int32
    f = LogitFile(tmp_path / "train-e0000", n=4, views=1, classes=40000, dtype="topk", topk=2)
    assert f.index.dtype == np.int32
    z = torch.zeros(2, 40000)
    z[0, 39999], z[0, 5], z[1, 33000], z[1, 0] = 9.0, 8.0, 7.0, 6.0
    values, index = topk_compress(z, 2)
    f.write(np.array([1, 3]), 0, values.numpy(), index.numpy())
    again = LogitFile(tmp_path / "train-e0000", n=4, views=1, classes=40000, dtype="topk", topk=2)
    assert again.index[1, 0].tolist() == [39999, 5] and again.index[3, 0].tolist() == [33000, 0]
    rebuilt = topk_expand(
        torch.from_numpy(np.array(again.values[[1, 3], 0])),
        torch.from_numpy(np.array(again.index[[1, 3], 0])),
        40000,
    )
    assert torch.equal(rebuilt, topk_expand(values, index, 40000))


@pytest.mark.parametrize("k", [0, -2, 2.5, "ten", True, None])
def test_a_bad_k_is_refused(tmp_path: Path, k):
    with pytest.raises(InputError, match=r"TeacherLogitCache\(topk=") as info:
        TeacherLogitCache(tmp_path, dtype="topk", topk=k)
    assert info.value.key == "topk"


def test_the_library_names_the_argument_and_config_keys_adds_the_applications_key(tmp_path):
    from cskd_lightning.errors import config_keys

    keys = {"dtype": "teacher.logit_cache_dtype"}
    with pytest.raises(InputError) as info, config_keys(keys):
        TeacherLogitCache(tmp_path, dtype="float8")
    assert str(info.value) == (
        "TeacherLogitCache(dtype='float8'): choose one of float32, float16, topk. "
        "(config: teacher.logit_cache_dtype)"
    )
    assert info.value.key == "teacher.logit_cache_dtype"
    with pytest.raises(InputError) as info, config_keys(keys):  # another argument: as raised
        TeacherLogitCache(tmp_path, dtype="topk", topk=0)
    assert info.value.key == "topk" and "(config:" not in str(info.value)


def test_k_of_every_class_is_refused_before_the_teacher_trains(tmp_path, capsys):
    cfg = compose_train(
        [
            "data=digits_device",
            "teacher.logit_cache=true",
            "teacher.logit_cache_dtype=topk",
            "teacher.logit_cache_topk=10",
        ],
        tmp_path,
    )
    line = user_error(cfg, capsys)
    assert "TeacherLogitCache(topk=10) keeps every class" in line and "< 10" in line
    assert line.endswith("(config: teacher.logit_cache_topk)")
    assert not (tmp_path / "cache" / "teachers").exists()


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
    dtype: str = "float32",
    topk: int | None = None,
    **data_kwargs,
) -> tuple[DistillationModule, TeacherLogitCache | None]:
    """One deterministic epoch of KD on the digits' device pipeline (``batches`` batches of
    ``batch_size``), with the logit cache in ``cache_root`` (``None``: the live teacher)."""
    L.seed_everything(0, workers=True)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    module = DistillationModule(student, teacher, KDLoss())
    dm = DeviceDataModule(DigitsDataModule(batch_size=batch_size, augment=True), **data_kwargs)
    cache = TeacherLogitCache(cache_root, dtype=dtype, topk=topk) if cache_root else None
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


def test_a_topk_cache_never_answers_a_float32_run_and_vice_versa(tmp_path: Path):
    """The storage (and k) is in the key: each of float32, top-3 and top-5 stores its own
    cache, answered only to a run with the same storage."""
    root = tmp_path / "cache"
    kinds = {"float32": ("float32", None), "top-3": ("topk", 3), "top-5": ("topk", 5)}
    directories = {}
    for name, (dtype, topk) in kinds.items():  # each stores: the others' rows never answer it
        _, cache = _fit(_digits_teacher(0), root, 32, 3, dtype=dtype, topk=topk)
        assert cache.stats == {"cached": 0, "computed": 3}, name
        directories[name] = cache.directory
    assert len(set(directories.values())) == 3
    for name, (dtype, topk) in kinds.items():  # and each is read by its own kind
        _, cache = _fit(_digits_teacher(0), root, 32, 3, dtype=dtype, topk=topk)
        assert cache.stats == {"cached": 3, "computed": 0}, name
        assert cache.directory == directories[name]
    assert sorted(p.name for p in directories["top-3"].glob("train-e0000.*")) == [
        "train-e0000.done",
        "train-e0000.lock",
        "train-e0000.topk-index",
        "train-e0000.topk-values",
    ]


def test_a_topk_student_is_the_same_from_a_cold_or_a_warm_cache(tmp_path: Path, caplog):
    """The run that stores the top-k records trains on their reconstruction, as the runs that
    read them do: the two students are bit-identical, and differ from the float32 student.
    Each run says once that top-k storage costs accuracy, and where that was measured."""
    root = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="cskd_lightning"):
        cold, stored = _fit(_digits_teacher(0), root, 32, 3, dtype="topk", topk=2)
    warned = [r.getMessage() for r in caplog.records if "Top-2 storage" in r.getMessage()]
    assert len(warned) == 1 and "docs/benchmarks/logit_cache.md" in warned[0]
    warm, read = _fit(_digits_teacher(0), root, 32, 3, dtype="topk", topk=2)
    exact, _ = _fit(_digits_teacher(0), None, 32, 3)
    assert stored.stats["computed"] == 3 and read.stats["cached"] == 3
    a, b, c = (m.student.state_dict() for m in (cold, warm, exact))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[key], c[key]) for key in a)
