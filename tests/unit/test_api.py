"""``cskd_lightning.distill``: the one-call API, and its method table against the configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_helpers import compose_train
from omegaconf import OmegaConf

import cskd_lightning
from cskd_lightning import CSKDLoss, KDLoss, distill
from cskd_lightning.api import make_loss, methods
from cskd_lightning.data import DigitsDataModule
from cskd_lightning.errors import InputError
from cskd_lightning.models import create_model

CONF = Path(cskd_lightning.__file__).resolve().parent.parent / "conf" / "distill"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_distill_config_is_a_method_with_the_same_loss(path: Path, tmp_path: Path) -> None:
    composed = compose_train([f"distill={path.stem}"], tmp_path)  # *_ls inherit from their base
    cfg = OmegaConf.to_container(composed.distill, resolve=True)
    cls, kwargs = methods()[cfg["name"]]
    loss_cfg = dict(cfg["loss"])
    assert f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}" == loss_cfg.pop("_target_")
    assert kwargs == loss_cfg
    # The data configs give two views exactly when the loss trains on two.
    assert composed.data.datamodule.two_view is (cls(**kwargs).num_views == 2)
    assert set(methods()) == {p.stem for p in CONF.glob("*.yaml")}


def test_make_loss_takes_overrides_and_names_the_methods() -> None:
    loss = make_loss("cskd_cswt", t_high=8.0)
    assert isinstance(loss, CSKDLoss) and loss.t_high == 8.0 and loss.cswt
    # The published settings, written here (the paper's and mdistiller's), read from the configs:
    # CSWT in [2, 6] around T = 4; KD 0.1 CE + 0.9 KD at T = 4; DKD beta 8 without a pair; the
    # *_ls variants inherit their base's other settings.
    cswt = make_loss("cskd_cswt")
    assert (cswt.t_low, cswt.t_high, cswt.temperature) == (2.0, 6.0, 4.0)
    kd = make_loss("kd")
    assert isinstance(kd, KDLoss) and (kd.temperature, kd.ce_weight, kd.kd_weight) == (4, 0.1, 0.9)
    assert make_loss("dkd").beta == 8.0 and make_loss("dkd_ls").logit_standardization
    assert make_loss("kd_ls").ce_weight == 0.1
    with pytest.raises(InputError, match="Unknown method 'cskdd'.*cskd_cswt"):
        make_loss("cskdd")


def test_distill_trains_the_student_and_returns_its_metrics() -> None:
    torch.manual_seed(0)
    datamodule = DigitsDataModule(batch_size=64)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    trained, metrics = distill(
        student,
        teacher,
        datamodule,
        method="kd",
        max_epochs=2,
        limit_train_batches=4,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    assert trained is student and not trained.training
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    for key in ("train/loss", "train/kd", "val/acc", "val/acc_best", "test/acc"):
        assert key in metrics, key
    # The reported test accuracy is the returned student's, on the datamodule's test set.
    correct = total = 0
    with torch.no_grad():
        for x, y in datamodule.test_dataloader():
            correct += int((trained(x).argmax(-1) == y).sum())
            total += len(y)
    assert metrics["test/acc"] == pytest.approx(correct / total, abs=1e-6)
    # The teacher was only read (weights and BatchNorm statistics).
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())


def test_distill_refuses_a_missing_teacher_for_a_distillation_method() -> None:
    student = create_model("digits_student", num_classes=10, in_channels=1)
    with pytest.raises(InputError, match="teacher=None"):
        distill(student, None, DigitsDataModule(), method="kd", max_epochs=1)
    assert isinstance(make_loss("kd"), KDLoss)


def test_an_untrained_teacher_is_warned_about_and_a_trained_one_is_not() -> None:
    """``distill()`` (through DistillationModule) warns when the teacher's validation accuracy is
    near chance; the teacher ``train_teacher`` returns passes."""
    import warnings

    from cskd_lightning import train_teacher
    from cskd_lightning.teacher_accuracy import untrained_threshold

    assert untrained_threshold(10) == pytest.approx(0.2)
    assert untrained_threshold(100) == pytest.approx(0.06)
    fast = {"enable_progress_bar": False, "limit_train_batches": 4, "accelerator": "cpu"}
    data = DigitsDataModule(batch_size=64)
    torch.manual_seed(0)
    random_teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    with pytest.warns(UserWarning, match=r"looks untrained, so the student is distilled from"):
        distill(student, random_teacher, data, max_epochs=1, test=False, **fast)

    teacher, metrics = train_teacher(
        create_model("digits_teacher", num_classes=10, in_channels=1),
        data,
        max_epochs=2,
        **{**fast, "limit_train_batches": 1.0},
    )
    assert metrics["test/acc"] > 0.8 and not teacher.training
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distill(student, teacher, data, max_epochs=1, test=False, **fast)
    assert not [w for w in caught if "looks untrained" in str(w.message)]
