"""Tests of the datamodules in ``cskd_lightning.data``.

Real data: scikit-learn's digits, Fashion-MNIST (Debian's ``dataset-fashion-mnist`` in
/usr/share/datasets/fashion-mnist, skipped if absent) and CIFAR where ``CIFAR_DIR`` points to
it (skipped otherwise); CIFAR, ImageNet and the small Fashion-MNIST layouts are also written as
tiny fakes in the real on-disk formats under ``tmp_path``. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import inspect
import os
import pickle
import random
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import FMNIST_DIR, needs_fmnist, write_cifar, write_image_folder
from sklearn.datasets import load_digits

from cskd_lightning.data import (
    BaseDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    Cutout,
    DeviceDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    FashionMNISTPairsDataModule,
    ImageNetDataModule,
    TwoViewTransform,
)
from cskd_lightning.data.base import TensorImageDataset
from cskd_lightning.data.fashion_mnist import read_idx
from cskd_lightning.errors import InputError, MissingInputError
from cskd_lightning.export import preprocessing_of


def _check_batch(x: torch.Tensor, y: torch.Tensor, b: int, c: int, s: int) -> None:
    assert x.shape == (b, c, s, s) and x.dtype == torch.float32
    assert y.shape == (b,) and y.dtype == torch.int64


def _class_counts(dataset, num_classes: int) -> np.ndarray:
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.bincount(labels, minlength=num_classes)


# ---------------------------------------------------------------------------- transforms
def test_cutout_zeroes_a_square_up_to_half_the_side():
    torch.manual_seed(0)
    x = torch.ones(3, 32, 32)
    cut = Cutout()
    for _ in range(50):
        out = cut(x)
        assert out.shape == x.shape and torch.equal(x, torch.ones(3, 32, 32))  # input untouched
        zeros = out[0] == 0
        assert 1 <= int(zeros.sum()) <= 16 * 16
        assert torch.equal(zeros, out[1] == 0) and torch.equal(zeros, out[2] == 0)
        rows, cols = zeros.any(1).nonzero(), zeros.any(0).nonzero()
        assert int(zeros.sum()) == len(rows) * len(cols)  # a (clipped) rectangle
    fixed = Cutout(size=8)
    sizes = {int((fixed(torch.ones(1, 32, 32)) == 0).sum()) for _ in range(100)}
    assert max(sizes) == 64 and min(sizes) >= 16  # clipped at the borders at most to 4x4


def test_two_view_transform():
    t = TwoViewTransform(lambda v: v + 1, lambda v: v * 10)
    assert t(torch.tensor(2.0)) == (torch.tensor(3.0), torch.tensor(20.0))


# ---------------------------------------------------------------------------- a new dataset
class _Squares(BaseDataModule):
    """A dataset as README's recipe writes one: class attributes and ``load_raw``, nothing else."""

    num_classes = 2
    in_channels = 1
    image_size = 6
    crop_padding = 1
    flip = True
    mean = (0.5,)
    std = (0.25,)
    val_split = 4

    def load_raw(self) -> tuple[TensorImageDataset, torch.Tensor, TensorImageDataset]:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (40, 1, 6, 6), generator=g, dtype=torch.uint8)
        labels = torch.arange(40) % 2
        train = TensorImageDataset(images[:32], labels[:32])
        return train, train.targets, TensorImageDataset(images[32:], labels[32:])


def test_a_dataset_is_its_class_attributes_and_load_raw():
    regular, device = _Squares(batch_size=8), DeviceDataModule(_Squares(batch_size=8))
    regular.setup("fit")
    # the default val_split of the class holds out 4 of the 32 training images in both pipelines
    assert len(regular.val_set) == 4 and len(regular.train_set) == 28
    assert device.split_tensors("val")[0].shape == (4, 1, 6, 6)
    x, y = next(iter(regular.train_dataloader()))
    _check_batch(x, y, 8, 1, 6)
    # evaluation: (x / 255 - 0.5) / 0.25 of the raw test images, the same in both pipelines
    raw = _Squares().load_raw()[2].images[:8].to(torch.float64)
    expected = ((raw / 255.0 - 0.5) / 0.25).to(torch.float32)
    regular_test = next(iter(regular.test_dataloader()))[0]
    assert torch.allclose(regular_test, expected, atol=1e-6, rtol=0)
    assert torch.equal(next(iter(device.test_dataloader()))[0], regular_test)
    # training: crop with padding 1 and flip, described once by the class, in both pipelines
    crop, flip = regular.augment_transform().transforms
    assert (crop.height, crop.width, crop.padding, flip.p) == (6, 6, 1, 0.5)
    settings = device.augmentation_settings()
    assert (settings["crop_padding"], settings["flip"]) == (1, True)
    assert (settings["mean"], settings["std"], settings["scale"]) == ([0.5], [0.25], 255.0)
    # the base class's arguments are the subclass's, with its defaults
    assert list(inspect.signature(_Squares).parameters)[:2] == ["batch_size", "eval_batch_size"]
    assert _Squares(val_split=0, augment=False).val_split == 0


def test_subclasses_take_the_base_arguments_and_state_only_their_defaults():
    assert (DigitsDataModule().val_split, DigitsDataModule().augment) == (0.1, False)
    assert (FashionMNISTPairsDataModule().val_split, FashionMNISTPairsDataModule().flip) == (
        5000,
        False,
    )
    pairs = FashionMNISTPairsDataModule(
        data_dir="/x", batch_size=16, val_split=0.2, augment=False, seed=4, num_train_pairs=9
    )
    assert (pairs.data_dir, pairs.batch_size, pairs.val_split, pairs.augment, pairs.seed) == (
        "/x",
        16,
        0.2,
        False,
        4,
    )
    assert pairs.num_train_pairs == 9 and pairs.crop_size == (28, 56)
    takes = inspect.signature(FashionMNISTPairsDataModule).parameters
    assert {"data_dir", "download", "batch_size", "val_split", "pair_seed"} <= set(takes)
    with pytest.raises(TypeError, match="val_splt"):
        FashionMNISTPairsDataModule(val_splt=3)


# ---------------------------------------------------------------------------- digits
def test_digits_shapes_and_splits():
    raw = load_digits()
    dm = DigitsDataModule(batch_size=32)
    assert dm.num_classes == len(np.unique(raw.target))  # known before setup
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1293, 144, 360)
    x, y = next(iter(dm.train_dataloader()))
    assert (dm.in_channels, dm.image_size, dm.image_size) == (1, *raw.images.shape[1:])
    _check_batch(x, y, 32, 1, 8)
    x, y = next(iter(dm.test_dataloader()))
    _check_batch(x, y, 32, 1, 8)
    assert dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last
    # normalised with the (non-test) train pool statistics
    pool = torch.cat(
        [torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])]
        + [torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])]
    )
    assert abs(float(pool.mean())) < 1e-4 and abs(float(pool.std()) - 1) < 1e-3
    # stratified: each class keeps its share in every part (+-1 sample)
    total = np.bincount(raw.target)
    for part, frac in ((dm.test_set, 0.2), (dm.val_set, 0.8 * 0.1)):
        counts = _class_counts(part, 10)
        assert np.all(np.abs(counts - total * frac) <= 1.5), counts


def test_digits_test_set_fixed_and_val_seeded():
    dms = [DigitsDataModule(seed=s) for s in (0, 0, 1)]
    for dm in dms:
        dm.setup("fit")
    a, b, c = (next(iter(dm.test_dataloader())) for dm in dms)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])  # test set ignores seed
    va, vb, vc = (dm.val_set.indices for dm in dms)
    assert np.array_equal(va, vb) and not np.array_equal(va, vc)
    # same seed -> same shuffling; the shuffling is seeded, not global-RNG driven
    torch.manual_seed(123)
    ya = next(iter(dms[0].train_dataloader()))[1]
    torch.manual_seed(456)
    yb = next(iter(dms[1].train_dataloader()))[1]
    assert torch.equal(ya, yb)


@pytest.mark.parametrize(("val_split", "n_val"), [(0, 360), (100, 100), (0.25, 360), (50.0, 50)])
def test_digits_val_split(val_split, n_val):
    dm = DigitsDataModule(val_split=val_split)
    dm.setup("fit")
    assert len(dm.val_set) == n_val
    assert len(dm.train_set) == 1437 - (0 if val_split == 0 else n_val)
    if val_split == 0:
        assert dm.val_set is dm.test_set


def test_digits_bad_val_split():
    with pytest.raises(ValueError, match="val_split"):
        DigitsDataModule(val_split=-1)
    dm = DigitsDataModule(val_split=1437)
    with pytest.raises(ValueError, match="val_split"):
        dm.setup("fit")
    dm = DigitsDataModule(val_split=3)  # fewer than the 10 classes: cannot stratify
    with pytest.raises(ValueError, match="stratified"):
        dm.setup("fit")


def test_digits_augment_and_two_view():
    dm = DigitsDataModule(batch_size=16, augment=True, two_view=True)
    dm.setup("fit")
    (xw, xs), y = next(iter(dm.train_dataloader()))
    _check_batch(xw, y, 16, 1, 8)
    _check_batch(xs, y, 16, 1, 8)
    assert not torch.equal(xw, xs)
    x, y = next(iter(dm.val_dataloader()))  # val stays single view
    _check_batch(x, y, 16, 1, 8)


# ---------------------------------------------------------------------------- batch division
def test_batch_divided_by_world_size():
    dm = DigitsDataModule(batch_size=64, eval_batch_size=100)
    dm.trainer = SimpleNamespace(world_size=2)
    dm.setup("fit")
    assert dm.per_process_batch_size == 32 and dm.per_process_eval_batch_size == 50
    assert dm.train_dataloader().batch_size == 32
    assert dm.val_dataloader().batch_size == 50
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[0] == 32


def test_batch_not_divisible_raises():
    dm = DigitsDataModule(batch_size=7)
    dm.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"batch_size=7.*\(2\)") as info:
        dm.setup("fit")
    assert "set batch_size to a multiple of 2" in str(info.value)
    assert info.value.key == "batch_size"


def test_drop_last_only_when_dataset_holds_a_batch():
    dm = DigitsDataModule(batch_size=2000, val_split=0)
    loader = dm.train_dataloader()
    assert not loader.drop_last and len(loader) == 1


# ---------------------------------------------------------------------------- the stream


def test_the_stream_leaves_the_global_random_generators_alone():
    """Neither the order nor the augmentation draws from torch's, numpy's or Python's global
    generator (so nothing else that does, dropout say, sees its numbers moved)."""
    dm = DigitsDataModule(batch_size=64, val_split=0, augment=True, two_view=True)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for _ in loader:
            pass
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


# ---------------------------------------------------------------------------- Fashion-MNIST
def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = struct.pack(">II", magic, array.shape[0]) + b"".join(
        struct.pack(">I", d) for d in array.shape[1:]
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_fmnist(folder: Path, n_train: int = 200, n_test: int = 50, compress: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", imgs, 0x803, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, 0x801, compress)


def _no_download(*args, **kwargs):
    raise AssertionError("tried to download although the files are there")


@pytest.mark.parametrize("compress", [True, False])
def test_fmnist_torchvision_layout(tmp_path, compress, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _no_download)
    _fake_fmnist(tmp_path / "FashionMNIST" / "raw", compress=compress)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=20, val_split=50, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (150, 50, 50)
    assert np.all(_class_counts(dm.val_set, 10) == 5)
    x, y = next(iter(dm.train_dataloader()))
    _check_batch(x, y, 20, 1, 28)


def test_fmnist_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    dm = FashionMNISTDataModule(data_dir=str(missing))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "point data_dir at it, or let torchvision download it with download=True." in msg
    assert info.value.key == "data_dir"  # the application names its config key


def test_fmnist_bad_idx_files(tmp_path):
    bad = tmp_path / "labels-bad-magic"
    _write_idx(bad, np.zeros(5), 0x803, compress=False)
    with pytest.raises(ValueError, match="labels-bad-magic.*magic"):
        read_idx(bad, "labels")
    short = tmp_path / "short-images.gz"
    with gzip.open(short, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 100, 28, 28) + bytes(28 * 28 * 3))
    with pytest.raises(ValueError, match="short-images.gz"):
        read_idx(short, "images")


@needs_fmnist
def test_fmnist_truncated_gz_names_file(tmp_path):
    for f in FMNIST_DIR.glob("*.gz"):
        (tmp_path / f.name).symlink_to(f)
    victim = tmp_path / "train-labels-idx1-ubyte.gz"
    victim.unlink()
    victim.write_bytes((FMNIST_DIR / victim.name).read_bytes()[:10_000])
    dm = FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        dm.setup("fit")


@needs_fmnist
def _raw_fmnist(part: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28), labels (N,))`` read from the idx files here, with gzip and numpy
    alone (not the module's reader)."""
    with gzip.open(FMNIST_DIR / f"{part}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST_DIR / f"{part}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    return images, labels


@needs_fmnist
def test_fmnist_real_data_sizes():
    (train_images, train_labels), (_, test_labels) = _raw_fmnist("train"), _raw_fmnist("t10k")
    dm = FashionMNISTDataModule(batch_size=128, val_split=0)
    assert dm.num_classes == len(np.unique(train_labels))  # known before setup
    dm.setup("fit")
    assert len(dm.train_set) == len(train_labels) and len(dm.test_set) == len(test_labels)
    assert dm.val_set is dm.test_set
    train_src = dm.train_set.source
    assert train_src.images.dtype == torch.uint8
    assert np.array_equal(train_src.images.squeeze(1).numpy(), train_images)
    assert np.array_equal(train_src.targets.numpy(), train_labels)
    assert np.array_equal(dm.test_set.source.targets.numpy(), test_labels)
    x, y = next(iter(dm.test_dataloader()))
    _check_batch(x, y, 128, 1, 28)
    assert (dm.in_channels, dm.image_size) == (x.shape[1], x.shape[-1])
    dm = FashionMNISTDataModule()  # default: 5000 stratified validation images
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (len(train_labels) - 5000, 5000)
    share = 5000 * np.bincount(train_labels) / len(train_labels)
    assert np.all(np.abs(_class_counts(dm.val_set, dm.num_classes) - share) <= 1), share


@needs_fmnist
def test_fmnist_normalised_training_images_have_zero_mean_and_unit_std():
    """The normalisation statistics are the training images': checked against the raw file."""
    images, _ = _raw_fmnist("train")
    normalise = FashionMNISTDataModule().normalization()
    x = normalise(torch.from_numpy(images.copy()).unsqueeze(1))  # (N, 1, 28, 28)
    mean, std = x.double().mean(dim=(0, 2, 3)), x.double().std(dim=(0, 2, 3))
    assert torch.all(mean.abs() < 2e-3) and torch.all((std - 1).abs() < 2e-3), (mean, std)


# ---------------------------------------------------------------------------- CIFAR
# The normalisation, written here (not read from the datamodule):
# - CIFAR-100: the constants the released teachers were trained with, RepDistiller's and
#   mdistiller's dataset/cifar100.py: Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565,
#   0.2761)); a teacher loaded from their checkpoints needs its own input scale.
# - CIFAR-10: the usual constants (the training images' per-channel statistics).
CIFAR_NORM = {
    CIFAR100DataModule: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    CIFAR10DataModule: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _expected_cifar_batch(folder: Path, cls: type, n: int) -> torch.Tensor:
    """The first ``n`` test images of the written files, normalised with :data:`CIFAR_NORM`."""
    with open(folder / ("test_batch" if cls is CIFAR10DataModule else "test"), "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_NORM[cls])
    return (torch.from_numpy(raw["data"][:n].reshape(n, 3, 32, 32)).float() / 255 - mean) / std


@pytest.mark.parametrize(
    ("cls", "classes", "n_train", "n_test", "num_classes"),
    [
        (CIFAR10DataModule, 10, 100, 30, 10),
        (CIFAR100DataModule, 100, 200, 100, 100),
    ],
)
def test_cifar_fake_data(tmp_path, cls, classes, n_train, n_test, num_classes):
    folder = write_cifar(tmp_path, classes, n_train, n_test)
    dm = cls(data_dir=str(tmp_path), batch_size=16)
    assert dm.num_classes == num_classes
    dm.setup("fit")
    assert len(dm.train_set) == n_train and len(dm.test_set) == n_test
    assert dm.val_set is dm.test_set  # default val_split=0: validate on the test set
    assert len(dm.classes) == num_classes
    x, y = next(iter(dm.train_dataloader()))
    _check_batch(x, y, 16, 3, 32)
    assert (dm.in_channels, dm.image_size) == (x.shape[1], x.shape[-1])
    # evaluation batches are exactly (raw / 255 - mean) / std with CIFAR_NORM, in file order
    x, y = next(iter(dm.test_dataloader()))
    _check_batch(x, y, 16, 3, 32)
    torch.testing.assert_close(x, _expected_cifar_batch(folder, cls, 16), rtol=0, atol=1e-6)
    assert y.tolist() == [i % num_classes for i in range(16)]


def test_cifar100_device_pipeline_and_export_use_the_teachers_constants(tmp_path):
    """data=cifar100_device normalises its batches on the device with the same constants, and
    the student.pt export records them (``cskd-export``'s and ``cskd-eval``'s preprocessing)."""
    folder = write_cifar(tmp_path, 100, n_train=64, n_test=32)
    dm = DeviceDataModule(CIFAR100DataModule(data_dir=str(tmp_path), batch_size=16))
    dm.setup("fit")
    x, _ = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(x, _expected_cifar_batch(folder, CIFAR100DataModule, 16))
    mean, std = CIFAR_NORM[CIFAR100DataModule]
    spec = preprocessing_of(dm)
    assert spec is not None and spec["scale"] == 255.0
    assert spec["mean"] == pytest.approx(mean, abs=1e-7)
    assert spec["std"] == pytest.approx(std, abs=1e-7)


CIFAR_DIR = Path(os.environ.get("CIFAR_DIR", "data"))


@pytest.mark.parametrize(
    ("cls", "folder", "files"),
    [
        (CIFAR10DataModule, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]),
        (CIFAR100DataModule, "cifar-100-python", ["train"]),
    ],
)
def test_cifar_normalised_training_images_have_zero_mean_and_unit_std(cls, folder, files):
    """The normalisation statistics are the real training images' (read from the pickles here);
    needs the real data in ``$CIFAR_DIR`` (default ``data/``, as ``paths.data_dir``)."""
    paths = [CIFAR_DIR / folder / name for name in files]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"real {folder} not in {CIFAR_DIR} (set CIFAR_DIR to the folder holding it)")
    raw = []
    for path in paths:
        with open(path, "rb") as f:
            raw.append(pickle.load(f, encoding="latin1")["data"])
    images = torch.from_numpy(np.concatenate(raw).reshape(-1, 3, 32, 32))
    x = cls(data_dir=str(CIFAR_DIR)).normalization()(images)
    mean, std = x.double().mean(dim=(0, 2, 3)), x.double().std(dim=(0, 2, 3))
    assert torch.all(mean.abs() < 5e-3) and torch.all((std - 1).abs() < 5e-3), (mean, std)


def test_cifar_two_view_and_val_split(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _no_download)
    write_cifar(tmp_path, 100, n_train=200, n_test=100)
    dm = CIFAR100DataModule(
        data_dir=str(tmp_path), batch_size=8, two_view=True, val_split=100, download=True
    )
    dm.prepare_data()  # files present: no download, no md5 check
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 100, 100)
    assert np.all(_class_counts(dm.val_set, 100) == 1)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, tuple) and isinstance(batch[0], tuple)
    (xw, xs), y = batch
    _check_batch(xw, y, 8, 3, 32)
    _check_batch(xs, y, 8, 3, 32)
    assert not torch.equal(xw, xs)
    x, y = next(iter(dm.val_dataloader()))
    _check_batch(x, y, 8, 3, 32)
    dm.num_workers = 1  # two-view batches also come through a worker process
    (xw, xs), y = next(iter(dm.train_dataloader()))
    _check_batch(xs, y, 8, 3, 32)


def test_cifar_missing_and_corrupt(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    assert str(tmp_path) in str(info.value) and "Pass download=True" in str(info.value)
    assert "point data_dir at" in str(info.value) and info.value.key == "data_dir"
    folder = write_cifar(tmp_path, 10, n_train=100, n_test=30)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")


# ---------------------------------------------------------------------------- ImageNet
@pytest.fixture
def image_tree(tmp_path) -> Path:
    return write_image_folder(tmp_path, ("ant", "bee", "cat"), {"train": 4, "val": 4})


def test_imagenet_tree(image_tree):
    dm = ImageNetDataModule(str(image_tree), batch_size=4, num_classes=3, image_size=32)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 32)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and dm.val_set is dm.test_set and len(dm.test_set) == 12
    assert dm.classes == ["ant", "bee", "cat"]
    x, y = next(iter(dm.train_dataloader()))
    _check_batch(x, y, 4, 3, 32)
    x, y = next(iter(dm.test_dataloader()))
    _check_batch(x, y, 4, 3, 32)
    assert y.tolist() == [0, 0, 0, 0]
    dm = ImageNetDataModule(
        str(image_tree), batch_size=4, num_classes=3, image_size=32, two_view=True, val_split=3
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (9, 3)
    (xw, xs), y = next(iter(dm.train_dataloader()))
    _check_batch(xw, y, 4, 3, 32)
    _check_batch(xs, y, 4, 3, 32)


def test_imagenet_errors(image_tree, tmp_path_factory):
    dm = ImageNetDataModule(str(image_tree), num_classes=5, image_size=32)
    with pytest.raises(
        ValueError, match=r"3 class folders.*num_classes=5; set num_classes=3"
    ) as info:
        dm.setup("fit")
    assert info.value.key == "num_classes"
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=str(empty / "train")) as info:
        ImageNetDataModule(str(empty)).setup("fit")
    assert f"data_dir={empty} must contain" in str(info.value) and info.value.key == "data_dir"
    shutil.rmtree(image_tree / "val" / "cat")
    with pytest.raises(ValueError, match="differ"):
        ImageNetDataModule(str(image_tree), num_classes=3).setup("fit")


def test_setup_errors_name_the_config_key_in_the_application(image_tree, tmp_path):
    """The datamodules name their Python arguments; ``cskd-train``'s data check appends the
    config key the user sets."""
    from cskd_lightning.app.checks import check_data

    with pytest.raises(InputError) as info:
        check_data(ImageNetDataModule(str(image_tree), num_classes=5, image_size=32))
    assert str(info.value).endswith(
        "set num_classes=3 or fix the folder (config: data.num_classes)"
    )
    with pytest.raises(FileNotFoundError) as info:
        check_data(CIFAR100DataModule(data_dir=str(tmp_path)))
    assert str(info.value).endswith(" (config: data.datamodule.data_dir)")
    assert isinstance(info.value, MissingInputError)
