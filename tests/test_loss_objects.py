"""The loss objects: their terms, their weights, their argument checks."""

from __future__ import annotations

import pytest
import torch

from cskd_lightning.losses import CELoss, CSKDLoss, DistillationLoss, KDLoss

F64 = torch.float64


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(21)
    zs = torch.randn(8, 10, generator=gen, dtype=F64)
    zt = 2 * torch.randn(8, 10, generator=gen, dtype=F64)
    y = torch.randint(0, 10, (8,), generator=gen)
    return zs, zt, y


def _approx(value: float) -> object:
    return pytest.approx(value, rel=1e-6, abs=1e-12)


def test_cskd_loss_terms_and_total_match_reference(ref, batch):
    zs, zt, y = batch
    loss = CSKDLoss(ce_weight=0.7, kd_weight=1.3)
    out = loss(zs, zt, y)
    assert {"loss", "ce", "cs", "cs_cswt", "cos_mean", "cswt_t_mean"} <= set(out)
    temps = ref.cswt(zs, zt, 2.0, 6.0)
    ce, cs, cs_cswt = ref.ce(zs, y), ref.cskd(zs, zt, 4.0), ref.cskd(zs, zt, temps)
    assert out["ce"].item() == _approx(ce)
    assert out["cs"].item() == _approx(cs)
    assert out["cs_cswt"].item() == _approx(cs_cswt)
    assert out["cswt_t_mean"].item() == _approx(temps.mean())
    assert out["cswt_t_min"].item() == _approx(2.0)
    assert out["cswt_t_max"].item() == _approx(6.0)
    # cos_mean is the mean per-class batch cosine at T: L_cs = alpha T^2 (1 - cos_mean).
    assert out["cos_mean"].item() == _approx(1 - cs / 32.0)
    assert out["loss"].item() == _approx(0.7 * ce + 1.3 * (cs + cs_cswt))
    assert out["loss"].requires_grad is False  # plain tensors in, nothing to differentiate
    for key in ("cos_mean", "cswt_t_mean", "cswt_t_min", "cswt_t_max"):
        assert out[key].grad_fn is None, key


def test_cskd_loss_defaults_are_the_paper_objective(ref, batch):
    zs, zt, y = batch
    zs = zs.clone().requires_grad_()
    out = CSKDLoss()(zs, zt, y)
    expected = ref.ce(zs, y) + ref.cskd(zs, zt, 4.0) + ref.cskd(zs, zt, ref.cswt(zs, zt))
    assert out["loss"].item() == _approx(expected)
    out["loss"].backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all()


def test_cskd_loss_without_cswt(ref, batch):
    zs, zt, y = batch
    out = CSKDLoss(cswt=False, temperature=3.0, alpha=1.5, ce_weight=0.5, kd_weight=2.0)(zs, zt, y)
    assert "cs_cswt" not in out and "cswt_t_mean" not in out
    expected = 0.5 * ref.ce(zs, y) + 2.0 * ref.cskd(zs, zt, 3.0, alpha=1.5)
    assert out["loss"].item() == _approx(expected)


def test_cskd_loss_custom_cswt_bounds(ref, batch):
    zs, zt, y = batch
    out = CSKDLoss(t_low=1.0, t_high=3.0)(zs, zt, y)
    temps = ref.cswt(zs, zt, 1.0, 3.0)
    assert out["cs_cswt"].item() == _approx(ref.cskd(zs, zt, temps))
    assert out["cswt_t_mean"].item() == _approx(temps.mean())


def test_cskd_loss_gather_without_process_group_changes_nothing(batch):
    zs, zt, y = batch
    a, b = CSKDLoss(gather=True)(zs, zt, y), CSKDLoss(gather=False)(zs, zt, y)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_kd_loss_is_hinton_kd(ref, batch):
    zs, zt, y = batch
    out = KDLoss()(zs, zt, y)
    assert set(out) == {"loss", "ce", "kd"}
    assert out["kd"].item() == _approx(ref.kd(zs, zt, 4.0))
    assert out["loss"].item() == _approx(0.1 * ref.ce(zs, y) + 0.9 * ref.kd(zs, zt, 4.0))
    out = KDLoss(temperature=2.0, ce_weight=1.0, kd_weight=0.5)(zs, zt, y)
    assert out["loss"].item() == _approx(ref.ce(zs, y) + 0.5 * ref.kd(zs, zt, 2.0))


def test_ce_loss_needs_no_teacher(ref, batch):
    zs, _, y = batch
    assert CELoss.requires_teacher is False
    assert CSKDLoss.requires_teacher is True and KDLoss.requires_teacher is True
    out = CELoss()(zs, None, y)
    assert out["loss"].item() == _approx(ref.ce(zs, y))


def test_loss_contract():
    for cls in (CSKDLoss, KDLoss, CELoss):
        assert issubclass(cls, DistillationLoss)
        assert cls().num_views == 1
    assert CSKDLoss.batch_level is True and KDLoss.batch_level is False
    loss = CSKDLoss()
    loss.set_progress(3, 120, 10)
    progress = loss.progress
    assert (progress.epoch, progress.global_step, progress.max_epochs) == (3, 120, 10)


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (CSKDLoss, {"t_low": 7.0, "t_high": 6.0}, "t_low"),
        (CSKDLoss, {"t_low": 0.0}, "t_low"),
        (CSKDLoss, {"t_high": -1.0}, "t_high"),
        (CSKDLoss, {"temperature": 0.0}, "temperature"),
        (CSKDLoss, {"temperature": -4.0}, "temperature"),
        (CSKDLoss, {"temperature": float("nan")}, "temperature"),
        (CSKDLoss, {"alpha": 0.0}, "alpha"),
        (CSKDLoss, {"ce_weight": -0.1}, "ce_weight"),
        (CSKDLoss, {"kd_weight": -1.0}, "kd_weight"),
        (CSKDLoss, {"kd_weight": float("inf")}, "kd_weight"),
        (KDLoss, {"temperature": 0.0}, "temperature"),
        (KDLoss, {"ce_weight": -1.0}, "ce_weight"),
        (KDLoss, {"kd_weight": -0.5}, "kd_weight"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_zero_weights_are_allowed(ref, batch):
    zs, zt, y = batch
    out = CSKDLoss(ce_weight=0.0)(zs, zt, y)
    assert out["loss"].item() == _approx(out["cs"].item() + out["cs_cswt"].item())
    out = KDLoss(kd_weight=0.0)(zs, zt, y)
    assert out["loss"].item() == _approx(0.1 * ref.ce(zs, y))
