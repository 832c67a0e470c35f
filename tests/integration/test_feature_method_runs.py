"""The feature methods and WTTM through ``cskd-train``'s code path on generated CIFAR-100 files:
``experiment=cifar100_standard pair=resnet32x4_resnet8x4 distill=<method>`` on the CPU for a
few batches, each logging its term beside ``train/ce``; the loss's own modules trained (in the
optimizer), in the checkpoints and not in ``student.pt``; a resumed CRD or ReviewKD run ends
bit-identical to an uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from app_helpers import compose_train, logged, read_summary
from helpers import write_cifar

from cskd_lightning.app.train import train

TERMS = {
    "fitnet": "fitnet",
    "at": "at",
    "rkd": "rkd",
    "pkt": "pkt",
    "sp": "sp",
    "crd": "crd",
    "reviewkd": "reviewkd",
    "wttm": "wttm",
}
WITH_MODULES = {"fitnet", "crd", "reviewkd"}
RUN = [
    "experiment=cifar100_standard",
    "pair=resnet32x4_resnet8x4",
    "trainer=cpu",
    "trainer.precision=32-true",
    "trainer.deterministic=true",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "pair.teacher.recipe.max_epochs=1",
    "data.datamodule.batch_size=16",
    "data.datamodule.num_workers=0",
    "callbacks.progress_bar=null",
]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """CIFAR-100 files (64 + 32 random images) and one teacher cache for the module's runs."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, 100, n_train=64, n_test=32)
    return root, tmp_path_factory.mktemp("cache")


def _run(cifar: tuple[Path, Path], out: Path, *extra: str) -> dict:
    data, cache = cifar
    overrides = [*RUN, f"paths.data_dir={data}", *extra]
    return train(compose_train(overrides, output_dir=out, cache_dir=cache))


def _check_run(run: Path, metrics: dict, method: str) -> None:
    """Its term logged beside CE; the loss's modules in the checkpoint and the optimizer, not
    in ``student.pt``."""
    term = TERMS[method]
    for key in ("train/ce", f"train/{term}", "train/loss"):
        assert math.isfinite(metrics[key]), key
    assert logged(run, f"train/{term}")
    assert read_summary(run)["method"] == method

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    loss_keys = [k for k in ckpt["state_dict"] if k.startswith("loss.")]
    student = [k for k in ckpt["state_dict"] if k.startswith("student.")]
    saved = torch.load(run / "student.pt", weights_only=True)["state_dict"]
    assert not [k for k in saved if "loss" in k or "embed" in k or "abf" in k]
    assert len(saved) == len(student)
    if method in WITH_MODULES:
        assert loss_keys
        # The optimizer trains the loss's parameters with the student's (SGD momentum buffers
        # for every parameter, the loss's included).
        from cskd_lightning.models import create_model

        n_student = len(list(create_model("resnet8x4", num_classes=100).parameters()))
        (group,) = ckpt["optimizer_states"][0]["param_groups"]
        assert len(group["params"]) > n_student
    else:
        assert not loss_keys


@pytest.mark.parametrize("method", [m for m in TERMS if m not in ("crd", "reviewkd")])
def test_method_trains_and_logs_its_term(cifar, tmp_path: Path, method: str) -> None:
    """One training step (CRD and ReviewKD: the resume test's runs)."""
    run = tmp_path / "run"
    extra = ["pair.student.recipe.max_epochs=1", "trainer.limit_train_batches=1", "test=false"]
    _check_run(run, _run(cifar, run, f"distill={method}", *extra), method)


@pytest.mark.long
@pytest.mark.parametrize("method", ["crd", "reviewkd"])
def test_resumed_run_is_bit_identical(cifar, tmp_path: Path, method: str) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    common = [f"distill={method}"]
    _check_run(full, _run(cifar, full, *common, "pair.student.recipe.max_epochs=2"), method)
    _run(cifar, part, *common, "pair.student.recipe.max_epochs=1")
    _run(
        cifar,
        part,
        *common,
        "pair.student.recipe.max_epochs=2",
        "ckpt_path=last",
        "resume_allow_config_change=true",
    )
    assert read_summary(part)["segments"] == 2  # it resumed, it did not start again
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys() and any(k.startswith("loss.") for k in sa)
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    assert logged(full, f"train/{method}") == logged(part, f"train/{method}")
