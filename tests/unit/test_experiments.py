"""The reproduction setups (conf/experiment, conf/pair, conf/recipe): each CIFAR-100 protocol,
with each of the 11 pairs, composes to the recipe docs/method.md sections 5 and 6 describe,
builds its models and loss, and runs a few batches end to end on generated CIFAR-100 /
ImageFolder data. Nothing is downloaded: ImageNet teachers are built with ``weights=null`` and
a guard makes any torchvision weight download fail the test.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from app_helpers import compose_train, read_summary
from helpers import REPO
from hydra.errors import ConfigCompositionException
from PIL import Image

from cskd_lightning.app.teacher_stage import teacher_cache_key
from cskd_lightning.app.train import train
from cskd_lightning.losses import DistillationLoss

CONF = REPO / "conf"

# docs/method.md section 5: the 11 CIFAR-100 pairs of the published code (teacher, student).
CIFAR_PAIRS = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
    ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
]
PAIR_MODELS = {f"{t}_{s}".lower(): (t, s) for t, s in CIFAR_PAIRS}
LIGHT_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")  # LR 0.01 in both protocols
# docs/method.md: protocol -> (student epochs, student LR, light student LR, views, loss class).
PROTOCOLS = {
    "standard": (240, 0.05, 0.01, 1, "CSKDLoss"),  # section 6
    "full": (480, 0.025, 0.01, 2, "CSKDFullLoss"),  # section 5
}
TEACHER_RECIPE = (240, 0.05)  # sections 5 and 6: the teacher is retrained, in both protocols
IMAGENET = {
    "imagenet_resnet34_resnet18": ("resnet34", "resnet18"),
    "imagenet_resnet50_mobilenetv2": ("resnet50", "mobilenet_v2"),
}
CIFAR_SETUPS = [(pair, protocol) for pair in PAIR_MODELS for protocol in PROTOCOLS]

# The few-batch runs: the whole file must stay under ~3 minutes on 2 busy cores and running all
# 22 CIFAR setups takes longer, so one setup per distinct teacher/student architecture is run
# (9 runs cover all 15 architectures and both protocols); every setup is still composed and
# instantiated above. test_run_selection_covers_every_architecture keeps this list honest.
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


def setup(pair: str, protocol: str) -> list[str]:
    """The documented command's overrides for one published CIFAR-100 setup."""
    return [f"experiment=cifar100_{protocol}", f"pair={pair}"]


@pytest.fixture(autouse=True)
def _no_weight_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything asks torchvision for pretrained weights."""
    import torchvision.models._api as tv_api

    def refuse(url: str, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)


def _instantiate_everything(cfg) -> DistillationLoss:
    for role in ("teacher", "student"):
        model = hydra.utils.instantiate(cfg.pair[role].model)
        recipe = cfg.pair[role].recipe
        optimizer = hydra.utils.instantiate(recipe.optimizer)(model.parameters())
        hydra.utils.instantiate(recipe.scheduler)(optimizer)
    loss = hydra.utils.instantiate(cfg.distill.loss)
    assert isinstance(loss, DistillationLoss)
    return loss


def test_every_cifar_pair_has_a_config() -> None:
    pairs = {p.stem for p in (CONF / "pair").glob("*.yaml")}
    assert set(PAIR_MODELS) | set(IMAGENET) <= pairs


@pytest.mark.parametrize(("pair", "protocol"), CIFAR_SETUPS)
def test_cifar_setup_composes_to_its_protocol(pair: str, protocol: str, tmp_path: Path) -> None:
    teacher_name, student_name = PAIR_MODELS[pair]
    epochs, lr, light_lr, views, loss_class = PROTOCOLS[protocol]
    cfg = compose_train(setup(pair, protocol), tmp_path)

    assert (cfg.data.name, cfg.pair.name, cfg.seed) == ("cifar100", pair, 0)
    assert cfg.data.datamodule.batch_size == 64 and cfg.data.datamodule.val_split == 0
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    assert (cfg.pair.teacher.model.name, cfg.pair.student.model.name) == (
        teacher_name,
        student_name,
    )
    assert not cfg.pair.teacher.get("pretrained", False)
    expected = {
        "teacher": TEACHER_RECIPE,
        "student": (epochs, light_lr if student_name in LIGHT_STUDENTS else lr),
    }
    for role, (role_epochs, role_lr) in expected.items():
        r = cfg.pair[role].recipe
        assert (r.max_epochs, r.optimizer.lr) == (role_epochs, role_lr), role
        assert r.optimizer._target_ == "torch.optim.SGD"
        assert (r.optimizer.momentum, r.optimizer.weight_decay) == (0.9, 5e-4)
        assert not r.optimizer.get("nesterov", False)
        assert r.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
        assert (list(r.scheduler.milestones), r.scheduler.gamma) == ([150, 180, 210], 0.1)
    assert cfg.trainer.max_epochs == epochs
    assert cfg.data.datamodule.two_view is (views == 2)

    loss = _instantiate_everything(cfg)
    assert type(loss).__name__ == loss_class
    assert loss.num_views == views
    if loss_class == "CSKDLoss":
        assert loss.cswt  # CSKD + CSWT


@pytest.mark.parametrize("pair", sorted(PAIR_MODELS))
def test_both_protocols_share_the_pairs_teacher(pair: str, tmp_path: Path) -> None:
    """The teacher is retrained with the same recipe in both protocols, so the cache holds one."""
    keys = {teacher_cache_key(compose_train(setup(pair, p), tmp_path)) for p in PROTOCOLS}
    assert len(keys) == 1


@pytest.mark.parametrize("experiment", ["cifar100_standard", "cifar100_full", "imagenet"])
def test_a_protocol_needs_a_pair(experiment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="You must specify 'pair'"):
        compose_train([f"experiment={experiment}"], tmp_path)


@pytest.mark.parametrize("pair", sorted(IMAGENET))
def test_imagenet_setup_composes_to_its_recipe(pair: str, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=imagenet", f"pair={pair}"], tmp_path)
    assert (cfg.data.name, cfg.pair.name, cfg.data.num_classes) == ("imagenet", pair, 1000)
    assert cfg.data.datamodule.batch_size == 512
    assert (cfg.pair.teacher.model.name, cfg.pair.student.model.name) == IMAGENET[pair]
    assert cfg.pair.teacher.pretrained is True
    assert cfg.pair.teacher.model.weights == "IMAGENET1K_V1"
    assert cfg.pair.student.model.get("weights") is None  # the student starts from scratch
    r = cfg.pair.student.recipe
    assert (r.max_epochs, r.optimizer.lr, r.optimizer.weight_decay) == (100, 0.2, 1e-4)
    assert (r.optimizer.momentum, list(r.scheduler.milestones), r.scheduler.gamma) == (
        0.9,
        [30, 60, 90],
        0.1,
    )
    assert cfg.trainer.max_epochs == 100 and cfg.trainer.accelerator == "gpu"
    assert cfg.data.datamodule.two_view is False

    offline = ["experiment=imagenet", f"pair={pair}", "pair.teacher.model.weights=null"]
    loss = _instantiate_everything(compose_train(offline, tmp_path))
    assert type(loss).__name__ == "CSKDLoss" and loss.cswt


# ------------------------------------------------------------------ few-batch runs on fake data
def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` in the real format: 64 + 32 random images."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("test", 32)):
        labels = [int(i % 100) for i in range(n)]
        _dump(
            folder / split,
            {
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "fine_labels": labels,
                "coarse_labels": [y // 5 for y in labels],
                "filenames": [f"{split}_{i}.png" for i in range(n)],
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
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
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/imagenet/{train,val}/<class>/*.png``: 2 classes, 8 + 4 images each, 40x40."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("n0001", "n0002"):
            folder = root / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
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
    assert 0.0 <= summary["student"]["test_acc"] <= 1.0


# ------------------------------------------------------------------ the documented commands
DOCS = REPO / "docs"


def documented_setups() -> list[list[str]]:
    """The overrides of every ``cskd-train ... experiment=...`` command of the docs, one
    composition per value of a swept key."""
    commands = set()
    for page in ("reproducing.md", "scaling.md"):
        for match in re.finditer(
            r"cskd-train ([^`\n]*experiment=[^`\n]*)", (DOCS / page).read_text()
        ):
            if "<" not in match.group(1):  # not a placeholder like pair=<pair>
                commands.add(match.group(1).rstrip("\\ "))
    setups = []
    for command in sorted(commands):
        words = [w for w in command.split() if "=" in w and not w.startswith("hydra.")]
        swept = [w for w in words if "," in w]
        for word in swept:  # e.g. seed=0,1,2,3,4: its first value
            words[words.index(word)] = word.split(",")[0]
        setups.append(words)
    return setups


def test_the_docs_list_every_cifar_and_imagenet_setup() -> None:
    found = set()
    for words in documented_setups():
        options = dict(w.split("=", 1) for w in words)
        found.add((options.get("experiment"), options.get("pair")))
    for pair, protocol in CIFAR_SETUPS:
        assert (f"cifar100_{protocol}", pair) in found, (pair, protocol)
    for pair in IMAGENET:
        assert ("imagenet", pair) in found, pair


@pytest.mark.parametrize("words", documented_setups(), ids=" ".join)
def test_every_documented_command_composes(words: list[str], tmp_path: Path) -> None:
    cfg = compose_train(words, tmp_path)
    assert cfg.pair.name == dict(w.split("=", 1) for w in words)["pair"]
