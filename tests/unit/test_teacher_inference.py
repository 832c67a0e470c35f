"""The teacher prepared once for its forward (``fold_teacher_batchnorm``): BatchNorm folded
into the convolutions, weights in autocast's dtype; its logits, refusals and cache key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer
from test_feature_distillation import DIGITS as DIGITS_FEATURES
from torch import nn

from cskd_lightning import CSKDLoss, DistillationModule, KDLoss
from cskd_lightning.data import DeviceDataModule, DigitsDataModule
from cskd_lightning.errors import InputError
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.losses import FitNetLoss
from cskd_lightning.models import create_model
from cskd_lightning.teacher_inference import fold_batchnorm, placed

pytestmark = pytest.mark.timeout(300)


def _teacher_with_moved_statistics(name: str = "resnet8x4") -> nn.Module:
    """A CIFAR model in eval mode whose BatchNorms are not the identity (fresh ones are)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def test_folding_keeps_the_logits_and_leaves_no_batchnorm_and_the_teacher_unchanged():
    teacher = _teacher_with_moved_statistics()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    folded = fold_batchnorm(teacher)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain, fast = _logits(teacher(x)), _logits(folded(x))
    # Float rounding only: the folded weights are W * gamma / sqrt(var + eps).
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) == 10
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in folded.parameters())
    teacher.train()  # a teacher in train mode (the application's, before it trains) stays so
    fold_batchnorm(teacher)
    assert teacher.training and all(m.training for m in teacher.modules())


def test_a_model_torch_fx_cannot_trace_is_refused_in_one_line():
    with pytest.raises(InputError, match="fold_teacher_batchnorm=False") as error:
        fold_batchnorm(create_model("vgg8", num_classes=100).eval())
    assert "\n" not in str(error.value) and "VGG" in str(error.value)
    torch.manual_seed(0)
    student = create_model("resnet8x4", num_classes=100)
    with pytest.raises(InputError, match="cannot fold VGG"):  # at once, before any fit
        DistillationModule(
            student, create_model("vgg8", num_classes=100), KDLoss(), fold_teacher_batchnorm=True
        )


def test_weights_cast_once_give_what_autocast_gives_with_a_cast_every_step():
    """Under CPU autocast (bfloat16) the prepared copy stores its conv/linear weights in
    bfloat16; autocast would cast the float32 weights to the same values at every call, so the
    logits are bit for bit those of the float32 folded copy under autocast."""
    teacher = _teacher_with_moved_statistics()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    folded = fold_batchnorm(teacher)
    cast_once = placed(folded, torch.device("cpu"), torch.bfloat16)
    cast_every_call = placed(folded, torch.device("cpu"), None)
    convs = [m for m in cast_once.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        once, every = _logits(cast_once(x)), _logits(cast_every_call(x))
    assert once.dtype == every.dtype == torch.bfloat16
    assert torch.equal(once, every)


def _digits_module(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    teacher = create_model("digits_teacher", num_classes=10, in_channels=1)
    student = create_model("digits_student", num_classes=10, in_channels=1)
    return DistillationModule(student, teacher, kwargs.pop("loss", CSKDLoss()), **kwargs)


def test_a_fit_with_the_folded_teacher_trains_on_its_logits():
    """In a real fit the folded copy answers the teacher's forward (the plain teacher's BN
    layers never run), its logits agree with the plain teacher's to float rounding, and the
    teacher's own weights are untouched."""
    module = _digits_module(fold_teacher_batchnorm=True)
    calls = []
    for m in module.teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda *a: calls.append(1))
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(
        module, datamodule=DeviceDataModule(DigitsDataModule(batch_size=32))
    )
    assert calls == []  # the folded copy ran, not the teacher
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(module.forward_teacher(x), _logits(module.teacher(x)))
    assert module.folded_teacher.model is not None  # made once, kept out of the module tree
    assert not any(m is module.folded_teacher.model for m in module.modules())
    assert module.state_dict().keys() == _digits_module().state_dict().keys()


def test_feature_methods_refuse_the_fold_in_one_line():
    with pytest.raises(InputError, match="fold_teacher_batchnorm=False"):
        _digits_module(
            loss=FitNetLoss(),
            fold_teacher_batchnorm=True,
            features=DIGITS_FEATURES,
        )


def test_the_fold_is_in_the_logit_cache_key(tmp_path: Path):
    """A cache filled by the plain teacher never answers a folded run (and the reverse): their
    logits differ by rounding. The plain key is what it was (no new entry)."""
    directories = {}
    for fold in (False, True, False):
        module = _digits_module(loss=KDLoss(), fold_teacher_batchnorm=fold)
        cache = TeacherLogitCache(tmp_path / "cache")
        quiet_trainer(
            max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[cache]
        ).fit(module, datamodule=DeviceDataModule(DigitsDataModule(batch_size=32)))
        if fold in directories:
            assert cache.directory == directories[fold]
            assert cache.stats == {"cached": 2, "computed": 0}
        else:
            directories[fold] = cache.directory
            assert cache.stats == {"cached": 0, "computed": 2}
    assert directories[True] != directories[False]
    assert "fold_teacher_batchnorm" not in (directories[False] / "meta.json").read_text()
