"""The reproduction setups (conf/experiment, conf/pair, conf/recipe): each CIFAR-100 protocol,
with each of the 11 pairs, composes to the recipe docs/method.md sections 5 and 6 describe,
and builds its models and loss (a few batches of some of them run end to end in
tests/integration/test_experiment_runs.py). Nothing is downloaded: ImageNet teachers are built
with ``weights=null`` and a guard makes any torchvision weight download fail the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import hydra
import pytest
from app_helpers import compose_train
from helpers import REPO
from hydra.errors import ConfigCompositionException
from published_setups import (
    CIFAR_SETUPS,
    IMAGENET,
    LIGHT_STUDENTS,
    PAIR_MODELS,
    PROTOCOLS,
    TEACHER_RECIPE,
    setup,
)

from cskd_lightning.app.teacher_stage import teacher_cache_key
from cskd_lightning.losses import DistillationLoss

CONF = REPO / "conf"
pytestmark = pytest.mark.usefixtures("no_weight_download")


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
