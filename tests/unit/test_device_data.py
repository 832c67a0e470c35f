"""The device-resident datamodules (cskd_lightning.data.device) on the CPU."""

from __future__ import annotations

import re
from collections import Counter

import hydra
import pytest
import torch
from app_helpers import compose_app
from helpers import needs_fmnist, process_view, quiet_trainer
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from cskd_lightning import CSKDLoss, DistillationModule
from cskd_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DeviceDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    FashionMNISTPairsDataModule,
)
from cskd_lightning.data.batch_augment import batch_crop_flip, batch_cutout, batch_rand_augment
from cskd_lightning.data.device import DeviceBatchLoader, ShardedPermutation
from cskd_lightning.data.transforms import RandomCropTensor, RandomHorizontalFlipTensor
from cskd_lightning.errors import InputError
from cskd_lightning.models import create_model

pytestmark = pytest.mark.timeout(120)


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _samples(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """The multiset of (image bytes, label) pairs."""
    return Counter(
        (xi.contiguous().numpy().tobytes(), int(yi)) for xi, yi in zip(x, y, strict=True)
    )


# ---------------------------------------------------------------------------- the source
def _regular_crop_and_flip(source) -> tuple[int, bool]:
    """The crop padding and flip of a datamodule's regular (DataLoader) augmentation."""
    transform = source.augment_transform()
    ops = getattr(transform, "transforms", [transform])
    (crop,) = [op for op in ops if isinstance(op, RandomCropTensor)]
    return crop.padding, any(isinstance(op, RandomHorizontalFlipTensor) for op in ops)


@pytest.mark.parametrize(
    "cls",
    [
        DigitsDataModule,
        FashionMNISTDataModule,
        FashionMNISTPairsDataModule,
        CIFAR10DataModule,
        CIFAR100DataModule,
    ],
)
def test_the_source_gives_the_device_augmentation_of_its_regular_one(cls):
    dm = DeviceDataModule(cls(batch_size=32))
    assert (dm.crop_padding, dm.flip) == _regular_crop_and_flip(dm.source)
    assert dm.batch_size == 32 and dm.num_classes == cls.num_classes
    override = DeviceDataModule(cls(), crop_padding=0, flip=False)
    assert (override.crop_padding, override.flip) == (0, False)


def test_the_source_as_a_class_or_a_dotted_path_with_its_arguments():
    given = DeviceDataModule(DigitsDataModule(batch_size=32, val_split=100, seed=3))
    for source in (DigitsDataModule, "cskd_lightning.data.DigitsDataModule"):
        built = DeviceDataModule(source, batch_size=32, val_split=100, seed=3, augment_seed=7)
        assert isinstance(built.source, DigitsDataModule)
        assert (built.batch_size, built.seed, built.augment_seed) == (32, 3, 7)
        for part in ("train", "val", "test"):
            for a, b in zip(built.split_tensors(part), given.split_tensors(part), strict=True):
                assert torch.equal(a, b)
    for source, kwargs, says in (
        ("cskd_lightning.data.NoSuchDataModule", {}, "source='cskd_lightning.data.NoSuchData"),
        ("DigitsDataModule", {}, "dotted path"),
        ("torch.nn.Linear", {}, "is not a BaseDataModule"),
        (DigitsDataModule(), {"batch_size": 32}, "give those to the instance's constructor"),
    ):
        with pytest.raises(InputError, match=re.escape(says)) as info:
            DeviceDataModule(source, **kwargs)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("digits_device", "digits"),
        ("fashion_mnist_device", "fashion_mnist"),
        ("fashion_mnist_pairs_device", "fashion_mnist_pairs"),
        ("cifar100_device", "cifar100"),
    ],
)
def test_device_configs_are_their_base_config_plus_the_device_pipeline(name, base):
    def data(*overrides: str):
        return compose_app("train", list(overrides)).data

    plain, device = (OmegaConf.to_container(data(f"data={n}")) for n in (base, name))
    assert device.pop("pipeline") == "device"
    regular, wrapped = plain.pop("datamodule"), device.pop("datamodule")
    assert device == plain  # name, num_classes, in_channels: the dataset's
    assert wrapped.pop("source") == regular.pop("_target_")
    assert wrapped.pop("_target_") == "cskd_lightning.data.DeviceDataModule"
    assert wrapped.pop("augment_seed") is None
    assert wrapped == regular  # every datamodule key of the base config, inherited
    keys = ("batch_size=32", "val_split=100", "augment_seed=4", "two_view=true", "seed=9")
    changed = data(f"data={name}", *(f"data.datamodule.{key}" for key in keys)).datamodule
    assert (changed.batch_size, changed.val_split, changed.augment_seed) == (32, 100, 4)
    assert changed.two_view is True and changed.seed == 9


def test_digits_device_config_builds_the_device_datamodule():
    cfg = compose_app("train", ["data=digits_device", "seed=3"])
    dm = hydra.utils.instantiate(cfg.data.datamodule, two_view=True)
    assert isinstance(dm, DeviceDataModule) and isinstance(dm.source, DigitsDataModule)
    assert dm.two_view and dm.seed == 3 and dm.augment_seed == 3 and dm.crop_padding == 1


# ---------------------------------------------------------------------------- batches
def test_shapes_dtypes_and_normalisation():
    dm = DeviceDataModule(DigitsDataModule(batch_size=64, augment=True))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatchLoader) and len(loader) == 1293 // 64
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (64,) and y.dtype == torch.int64
    assert dm.num_classes == 10 and dm.in_channels == 1 and dm.image_size == 8
    xe, _ = _epoch(dm.test_dataloader())
    assert abs(float(xe.mean())) < 0.1 and abs(float(xe.std()) - 1.0) < 0.1


@needs_fmnist
def test_fashion_mnist_uint8_on_device_and_normalised():
    dm = DeviceDataModule(FashionMNISTDataModule(batch_size=500, val_split=5000))
    dm.setup("fit")
    assert dm._tensors["train_images"].dtype == torch.uint8
    assert dm._tensors["train_images"].shape == (55000, 1, 28, 28)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1


@needs_fmnist
def test_fashion_mnist_same_test_batches_as_the_regular_loader():
    ref = FashionMNISTDataModule(batch_size=1000, val_split=5000)
    dev = DeviceDataModule(FashionMNISTDataModule(batch_size=1000, val_split=5000))
    (xr, yr), (xd, yd) = next(iter(ref.test_dataloader())), next(iter(dev.test_dataloader()))
    assert torch.equal(yr, yd) and torch.equal(xr, xd)


def test_same_data_as_the_regular_loader_without_augmentation():
    # 1,293 training digits = 3 batches of 431: no sample dropped by either loader.
    ref = DigitsDataModule(batch_size=431, augment=False)
    dev = DeviceDataModule(DigitsDataModule(batch_size=431, augment=False))
    xr, yr = _epoch(ref.train_dataloader())
    xd, yd = _epoch(dev.train_dataloader())
    assert xd.shape == xr.shape == (1293, 1, 8, 8)
    assert _samples(xd, yd) == _samples(xr, yr)
    # Both orders are randperm(N) seeded with seed + epoch: the same epoch, batch for batch.
    assert torch.equal(yd, yr) and torch.equal(xd, xr)
    for part in ("val_dataloader", "test_dataloader"):  # in order: identical batches
        (xr, yr), (xd, yd) = _epoch(getattr(ref, part)()), _epoch(getattr(dev, part)())
        assert torch.equal(xr, xd) and torch.equal(yr, yd)


def test_order_reproducible_for_a_seed_and_new_each_epoch():
    def first_epochs(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = DeviceDataModule(DigitsDataModule(batch_size=64, augment=True, seed=seed))
        loader = dm.train_dataloader()
        out = []
        for epoch in (0, 1, 0):
            loader.set_epoch(epoch)
            out.append(_epoch(loader))
        return out

    a, b, c = first_epochs(0), first_epochs(0), first_epochs(1)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):  # same seed: identical, augmentation too
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a[0][0], a[2][0])  # epoch 0 again: the same
    assert not torch.equal(a[0][1], a[1][1])  # epoch 1: another order
    assert not torch.equal(a[0][1], c[0][1])  # another seed: another order


def test_two_ranks_get_disjoint_shards_covering_the_set():
    # 1,437 - 145 = 1,292 training digits = 2 ranks x 17 batches x 38.
    full_x, full_y = _epoch(DigitsDataModule(batch_size=1292, val_split=145).train_dataloader())
    shards, orders = [], []
    for rank in (0, 1):
        dm = DeviceDataModule(DigitsDataModule(batch_size=76, val_split=145))
        dm.trainer = process_view(rank, 2)
        dm.setup("fit")
        assert dm.per_process_batch_size == 38
        loader = dm.train_dataloader()
        assert len(loader) == 17
        x, y = _epoch(loader)
        assert x.shape[0] == 646
        shards.append(_samples(x, y))
        orders.append(set(loader.sampler.indices().tolist()))
    assert not orders[0] & orders[1] and len(orders[0] | orders[1]) == 1292
    assert shards[0] + shards[1] == _samples(full_x, full_y)


def test_sharded_permutation_pads_in_order_like_distributed_sampler():
    shards = [ShardedPermutation(5, shuffle=False, rank=r, world_size=2) for r in (0, 1)]
    assert [s.indices().tolist() for s in shards] == [[0, 2, 4], [1, 3, 0]]
    shuffled = [ShardedPermutation(5, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    got = [set(s.indices().tolist()) for s in shuffled]
    assert len(got[0]) == len(got[1]) == 2 and not got[0] & got[1]


def test_global_batch_must_divide_by_the_world_size():
    dm = DeviceDataModule(DigitsDataModule(batch_size=75))
    dm.trainer = process_view(0, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        dm.setup("fit")


def test_two_view_batches():
    dm = DeviceDataModule(DigitsDataModule(batch_size=64, two_view=True, augment=True))
    (xw, xs), y = next(iter(dm.train_dataloader()))
    assert xw.shape == xs.shape == (64, 1, 8, 8) and xw.dtype == xs.dtype == torch.float32
    assert y.shape == (64,) and not torch.equal(xw, xs)
    x, _ = next(iter(dm.val_dataloader()))  # evaluation stays single-view
    assert isinstance(x, torch.Tensor) and x.shape[1:] == (1, 8, 8)


# ---------------------------------------------------------------------------- batched ops
def test_crop_flip_takes_a_shifted_possibly_mirrored_window():
    images = torch.arange(4 * 2 * 6 * 6, dtype=torch.float32).reshape(4, 2, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = batch_crop_flip(images, padding=2, flip=True, generator=g)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(4):
        windows = [
            w
            for t in range(5)
            for left in range(5)
            for w in (padded[i, :, t : t + 6, left : left + 6],)
            for w in (w, w.flip(-1))
        ]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(batch_crop_flip(images, 0, False, g), images)


def test_cutout_zeroes_one_square_per_sample():
    x = torch.ones(16, 3, 10, 10)
    out = batch_cutout(x, torch.Generator().manual_seed(1))
    zeros = (out == 0).all(dim=1)  # (B, H, W)
    for z in zeros:
        rows, cols = z.any(dim=1).nonzero().flatten(), z.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= 5 and 1 <= len(cols) <= 5
        assert int(z.sum()) == len(rows) * len(cols)  # a (clipped) rectangle


def test_rand_augment_stays_in_range_and_is_seeded():
    x = torch.rand(32, 3, 12, 12)
    a = batch_rand_augment(x, torch.Generator().manual_seed(2))
    b = batch_rand_augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and not torch.equal(a, x)
    assert torch.equal(batch_rand_augment(x, torch.Generator(), num_ops=0), x)


# ---------------------------------------------------------------------------- Lightning
class _EpochLabels(Callback):
    def __init__(self) -> None:
        self.first: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first.append(batch[1].clone())


def test_short_lightning_fit_with_the_device_datamodule(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    module = DistillationModule(student, teacher, CSKDLoss())
    dm = DeviceDataModule(DigitsDataModule(batch_size=64, augment=True))
    probe = _EpochLabels()
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=5,
        limit_val_batches=2,
        default_root_dir=tmp_path,
        callbacks=[probe],
    )
    trainer.fit(module, datamodule=dm)
    assert isinstance(trainer.train_dataloader, DeviceBatchLoader)
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch
    assert len(probe.first) == 2 and not torch.equal(probe.first[0], probe.first[1])
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    result = trainer.test(module, datamodule=dm, verbose=False)
    # Tested on the same, equally normalised images as the regular loader gives.
    correct = total = 0
    with torch.no_grad():
        for x, y in DigitsDataModule(batch_size=64).test_dataloader():
            correct += int((student.eval()(x).argmax(-1) == y).sum())
            total += len(y)
    assert total == 360 and result[0]["test/acc"] == pytest.approx(correct / total, abs=1e-6)


def _resume_run(tmp_path, epochs: int, ckpt: str | None = None):
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    module = DistillationModule(student, teacher, CSKDLoss())
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        deterministic=True,
        default_root_dir=tmp_path,
    )
    dm = DeviceDataModule(DigitsDataModule(batch_size=64, augment=True, two_view=True))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return trainer, student


def test_resume_at_an_epoch_end_sees_the_same_data(tmp_path):
    _, straight = _resume_run(tmp_path / "a", epochs=2)
    first, _ = _resume_run(tmp_path / "b", epochs=1)
    path = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(path)
    # Nothing of the data stream is stored: epoch 1's order and views follow from its number.
    assert not [key for key in torch.load(path, weights_only=True) if "DataModule" in key]
    _, resumed = _resume_run(tmp_path / "b", epochs=2, ckpt=str(path))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_source_named_by_its_dotted_path_is_imported_or_refused_in_one_line():
    dm = DeviceDataModule("cskd_lightning.data.DigitsDataModule", batch_size=64)
    assert type(dm.source) is DigitsDataModule and dm.source.batch_size == 64
    for bad in ("no_such_package.Module", "cskd_lightning.data.NoSuchModule", "Digits"):
        with pytest.raises(InputError, match=re.escape(f"source={bad!r} is not an importable")):
            DeviceDataModule(bad)
    with pytest.raises(InputError, match="is not a BaseDataModule"):
        DeviceDataModule("cskd_lightning.losses.CSKDLoss")
