"""A few batches end to end of the published setups (tests/published_setups.py) on generated
CIFAR-100 / ImageFolder data, one setup per distinct architecture. Nothing is downloaded:
ImageNet teachers are built with ``weights=null`` and a guard makes any torchvision weight
download fail the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_helpers import compose_train, read_summary
from helpers import read_cifar_test_set, student_pt_accuracy, write_cifar, write_image_folder
from published_setups import CIFAR_PAIRS, CIFAR_SETUPS, IMAGENET, PAIR_MODELS, PROTOCOLS, setup

from cskd_lightning.app.train import train

pytestmark = pytest.mark.usefixtures("no_weight_download")

# The few-batch runs: this file must stay under ~3 minutes on 2 busy cores and running all
# 22 CIFAR setups takes longer, so one setup per distinct teacher/student architecture is run
# (9 runs cover all 15 architectures and both protocols); every setup is still composed and
# instantiated (tests/unit/test_experiments.py). test_run_selection_covers_every_architecture
# keeps this list honest.
CIFAR_RUNS = [
    ("resnet56_resnet20", "standard"),
    ("resnet110_resnet32", "full"),
    ("resnet32x4_resnet8x4", "full"),
    ("wrn_40_2_wrn_16_2", "standard"),
    ("wrn_40_2_wrn_40_1", "full"),
    ("vgg13_vgg8", "standard"),
    ("resnet32x4_shufflev2", "standard"),
    ("wrn_40_2_shufflev1", "full"),
    ("resnet50_mobilenetv2", "full"),
]
SMOKE = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=1",
    "data.datamodule.batch_size=16",
    "data.datamodule.num_workers=0",
    "callbacks.progress_bar=null",
]
"""Overrides that turn a GPU experiment into a few CPU batches."""


TESTED = 16  # SMOKE tests one batch (limit_test_batches=1) of batch_size=16 images


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` in the real format: 64 + 32 random images."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, 100, n_train=64, n_test=32)
    return root


def test_run_selection_covers_every_architecture() -> None:
    chosen = {model for pair, _ in CIFAR_RUNS for model in PAIR_MODELS[pair]}
    assert chosen == {model for pair in CIFAR_PAIRS for model in pair}
    assert {protocol for _, protocol in CIFAR_RUNS} == set(PROTOCOLS)
    assert set(CIFAR_RUNS) <= set(CIFAR_SETUPS)


@pytest.mark.parametrize(("pair", "protocol"), CIFAR_RUNS)
def test_cifar_setup_runs_a_few_batches(
    pair: str, protocol: str, fake_cifar100: Path, tmp_path: Path
) -> None:
    overrides = [*setup(pair, protocol), *SMOKE, f"paths.data_dir={fake_cifar100}"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.trainer.accelerator == "cpu"
    metrics = train(cfg)
    summary = read_summary(tmp_path / "run")
    assert summary["pair"] == pair and summary["data"] == "cifar100"
    assert summary["method"] == cfg.distill.name
    assert summary["teacher"]["cached"] is False  # trained by the experiment's teacher recipe
    # The reported accuracy is the saved student's on the test images, preprocessed as the file
    # records (random labels: the value itself means nothing, where it comes from does).
    images, labels = read_cifar_test_set(fake_cifar100 / "cifar-100-python")
    expected = student_pt_accuracy(
        tmp_path / "run" / "student.pt", images[:TESTED], labels[:TESTED]
    )
    assert summary["student"]["test_acc"] == pytest.approx(expected, abs=1e-6)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/imagenet/{train,val}/<class>/*.png``: 2 classes, 8 + 4 images each, 40x40."""
    root = tmp_path_factory.mktemp("data")
    write_image_folder(root / "imagenet", ("n0001", "n0002"), {"train": 8, "val": 4})
    return root


@pytest.mark.parametrize("pair", sorted(IMAGENET))
def test_imagenet_setup_runs_one_batch(pair: str, fake_imagenet: Path, tmp_path: Path):
    overrides = [
        "experiment=imagenet",
        f"pair={pair}",
        *SMOKE,
        f"paths.data_dir={fake_imagenet}",
        "pair.teacher.model.weights=null",
        "data.num_classes=2",
        "+data.datamodule.image_size=32",
        "+trainer.limit_train_batches=1",
    ]
    overrides.remove("+trainer.limit_train_batches=2")
    cfg = compose_train(overrides, tmp_path)
    train(cfg)
    summary = read_summary(tmp_path / "run")
    assert summary["teacher"]["source"] == "pretrained"
    # Tested on the 8 validation images (one batch): a whole number of them right.
    assert summary["student"]["test_acc"] in [k / 8 for k in range(9)]
