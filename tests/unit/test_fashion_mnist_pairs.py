"""The 100-class Fashion-MNIST pairs: labels, split separation, shapes, seeds, device variant,
the pair of models (a real ``cskd-train data=fashion_mnist_pairs pair=fashion_mnist_pairs``:
tests/integration/test_fashion_mnist_pairs_runs.py).

Real data only: Debian's ``dataset-fashion-mnist`` in /usr/share/datasets/fashion-mnist (the
tests are skipped, saying so, without it). The expected labels are recomputed here from the raw
idx files, read with this file's own parser, by finding each half of every pair image among
the official images by its pixels: nothing of the datamodule's bookkeeping is reused.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FMNIST_DIR, needs_fmnist

from cskd_lightning.data import DeviceDataModule, FashionMNISTPairsDataModule
from cskd_lightning.data.fashion_mnist_pairs import draw_pair_indices
from cskd_lightning.export import input_shape_of
from cskd_lightning.models import count_parameters, create_model


def _raw(name: str, header: int) -> np.ndarray:
    with gzip.open(FMNIST_DIR / f"{name}.gz", "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


def _official(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28), labels (N,))`` of an official split, straight from the idx files."""
    prefix = "train" if split == "train" else "t10k"
    images = _raw(f"{prefix}-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    return images, _raw(f"{prefix}-labels-idx1-ubyte", 8).astype(np.int64)


def _labels_by_pixels(images: np.ndarray, labels: np.ndarray) -> dict[bytes, set[int]]:
    """Every distinct image (its bytes) -> the labels it has in the split (duplicates exist)."""
    index: dict[bytes, set[int]] = {}
    for image, label in zip(images, labels, strict=True):
        index.setdefault(image.tobytes(), set()).add(int(label))
    return index


@pytest.fixture(scope="module")
def pairs() -> FashionMNISTPairsDataModule:
    dm = FashionMNISTPairsDataModule(data_dir=str(FMNIST_DIR), batch_size=64, val_split=0)
    dm.setup("fit")
    return dm


def _pair_tensors(dm: FashionMNISTPairsDataModule, part: str) -> tuple[np.ndarray, np.ndarray]:
    source = (dm.train_set if part == "train" else dm.test_set).source
    return source.images.numpy(), source.targets.numpy()


# ------------------------------------------------------------------------------ labels, splits
@needs_fmnist
@pytest.mark.parametrize("part", ["train", "test"])
def test_labels_are_10a_plus_b_of_the_halves_found_in_their_own_split(pairs, part) -> None:
    images, labels = _pair_tensors(pairs, part)
    expected_count = {"train": 60000, "test": 10000}[part]
    assert images.shape == (expected_count, 1, 28, 56) and images.dtype == np.uint8
    own = _labels_by_pixels(*_official(part))
    other = _labels_by_pixels(*_official("test" if part == "train" else "train"))
    from_other_only = 0
    for image, label in zip(images[:, 0], labels, strict=True):
        left, right = image[:, :28].tobytes(), image[:, 28:].tobytes()
        # train/test separation: each half is an image of this pair's own official split
        assert left in own and right in own
        from_other_only += (left in other) + (right in other)
        assert int(label) in {10 * a + b for a in own[left] for b in own[right]}
    # the few images that occur in both official splits cannot account for a mixed set
    assert from_other_only < 0.01 * 2 * expected_count
    assert set(np.unique(labels).tolist()) == set(range(100))


@needs_fmnist
def test_every_training_image_is_used_once_per_side(pairs) -> None:
    images, _ = _pair_tensors(pairs, "train")
    official, _ = _official("train")
    for half in (images[:, 0, :, :28], images[:, 0, :, 28:]):
        # the multiset of halves equals the multiset of official images
        assert sorted(h.tobytes() for h in half) == sorted(o.tobytes() for o in official)


# ------------------------------------------------------------------------------ shapes, seeds
@needs_fmnist
def test_batches_shapes_and_splits() -> None:
    dm = FashionMNISTPairsDataModule(data_dir=str(FMNIST_DIR), batch_size=32, two_view=True)
    assert (dm.num_classes, dm.in_channels, dm.image_shape) == (100, 1, (28, 56))
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    (weak, strong), y = next(iter(dm.train_dataloader()))
    assert weak.shape == strong.shape == (32, 1, 28, 56) and weak.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 100
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 1, 28, 56)
    # the normalised test images have about zero mean and unit std (Fashion-MNIST's statistics)
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1.0) < 0.2


@needs_fmnist
def test_pairs_depend_on_pair_seed_only() -> None:
    def load(**kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dm = FashionMNISTPairsDataModule(
            data_dir=str(FMNIST_DIR), num_train_pairs=3000, num_test_pairs=500, **kwargs
        )
        train, train_labels, test = dm.load_raw()
        return train.images, train_labels, test.images

    first, again, other_run_seed = load(pair_seed=3), load(pair_seed=3), load(pair_seed=3, seed=9)
    for a, b, c in zip(first, again, other_run_seed, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    other_pairs = load(pair_seed=4)
    assert not torch.equal(first[0], other_pairs[0]) and not torch.equal(first[2], other_pairs[2])


def test_pair_indices_cover_each_image_evenly() -> None:
    left, right = draw_pair_indices(7, 17, seed=0)
    for side in (left, right):
        counts = np.bincount(side, minlength=7)
        assert counts.min() >= 17 // 7 and counts.max() <= -(-17 // 7)
    assert not np.array_equal(left, right)
    assert np.array_equal(draw_pair_indices(7, 17, seed=0)[1], right)


def test_the_exported_input_shape_is_the_pairs_28_by_56() -> None:
    for dm in (FashionMNISTPairsDataModule(), DeviceDataModule(FashionMNISTPairsDataModule())):
        assert input_shape_of(dm) == [1, 28, 56]


def test_missing_data_and_bad_counts_are_one_line_errors(tmp_path: Path) -> None:
    dm = FashionMNISTPairsDataModule(data_dir=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nope") in message
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(ValueError, match="^num_train_pairs must be a positive integer") as bad:
        FashionMNISTPairsDataModule(num_train_pairs=0)
    assert bad.value.key == "num_train_pairs"  # the application names data.datamodule.<key>


# ------------------------------------------------------------------------------ device variant
@needs_fmnist
def test_device_variant_has_the_same_sets_and_eval_batches() -> None:
    kwargs = dict(data_dir=str(FMNIST_DIR), batch_size=50, val_split=1000, num_train_pairs=6000)
    regular = FashionMNISTPairsDataModule(**kwargs)
    regular.setup("fit")
    device = DeviceDataModule(FashionMNISTPairsDataModule(**kwargs))
    device.setup("fit")
    tensors = device._cpu
    assert tensors is not None
    for part, subset in (("train", regular.train_set), ("val", regular.val_set)):
        idx = torch.from_numpy(subset.indices)
        assert torch.equal(tensors[f"{part}_images"], subset.source.images[idx])
        assert torch.equal(tensors[f"{part}_labels"], subset.source.targets[idx])
    assert torch.equal(tensors["test_images"], regular.test_set.source.images)
    for ours, theirs in zip(device.test_dataloader(), regular.test_dataloader(), strict=True):
        assert torch.allclose(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    x, y = next(iter(device.train_dataloader()))
    assert x.shape == (50, 1, 28, 56) and y.shape == (50,)
    # no horizontal flip: it would swap the halves and so change the label
    assert device._transform(train=True).flip is False


# ------------------------------------------------------------------------------ models
def _conv_bn(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + 2 * c_out  # 3x3 conv without bias, BatchNorm weight and bias


def test_pair_models_sizes_and_ratio() -> None:
    # widths 8/16/16, pool 1x2 -> 32 features; 16/32/64, pool 2x4 -> 512 features; 100 classes
    student_expected = _conv_bn(1, 8) + _conv_bn(8, 16) + _conv_bn(16, 16) + 32 * 100 + 100
    teacher_expected = _conv_bn(1, 16) + _conv_bn(16, 32) + _conv_bn(32, 64) + 512 * 100 + 100
    student = create_model("fmnist_pairs_student", num_classes=100, in_channels=1)
    teacher = create_model("fmnist_pairs_teacher", num_classes=100, in_channels=1)
    assert count_parameters(student) == student_expected == 6908
    assert count_parameters(teacher) == teacher_expected == 74708
    assert teacher_expected >= 10 * student_expected
    x = torch.randn(4, 1, 28, 56)
    swapped = torch.cat([x[..., 28:], x[..., :28]], dim=-1)
    for model in (student.eval(), teacher.eval()):
        with torch.no_grad():
            out = model(x)
            assert out.shape == (4, 100)
            # the pools keep a left and a right cell: swapping the halves changes the output
            assert not torch.allclose(out, model(swapped), atol=1e-4)


# ------------------------------------------------------------------------------ the real command
