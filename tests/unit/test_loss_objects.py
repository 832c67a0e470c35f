"""The loss objects: their terms, their weights, their views, their argument checks."""

from __future__ import annotations

import pytest
import torch

from cskd_lightning.errors import InputError
from cskd_lightning.losses import (
    CELoss,
    CSKDFullLoss,
    CSKDLoss,
    DISTLoss,
    DKDLoss,
    KDLoss,
    MLKDLoss,
)

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


# The method's published setting (Ham et al., arXiv 2311.14307; docs/method.md): T = 4,
# alpha = 2, CSWT between t_low = 2 and t_high = 6, CE and the distillation terms weighted 1.
PUBLISHED_T, PUBLISHED_ALPHA, PUBLISHED_T_LOW, PUBLISHED_T_HIGH = 4.0, 2.0, 2.0, 6.0


def test_cskd_loss_defaults_are_the_paper_objective(ref, batch):
    zs, zt, y = batch
    zs = zs.clone().requires_grad_()
    out = CSKDLoss()(zs, zt, y)
    temps = ref.cswt(zs, zt, PUBLISHED_T_LOW, PUBLISHED_T_HIGH)
    cs = ref.cskd(zs, zt, PUBLISHED_T, alpha=PUBLISHED_ALPHA)
    cs_cswt = ref.cskd(zs, zt, temps, alpha=PUBLISHED_ALPHA)
    assert out["cs"].item() == _approx(cs)
    assert out["cs_cswt"].item() == _approx(cs_cswt)
    assert out["cswt_t_mean"].item() == _approx(temps.mean())
    assert out["loss"].item() == _approx(ref.ce(zs, y) + cs + cs_cswt)
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
    for out in (CELoss()(zs, None, y), CELoss().forward_views([zs], None, y)):
        assert out["loss"].item() == _approx(ref.ce(zs, y))


def test_set_progress_is_what_the_loss_reads():
    loss = CSKDLoss()
    loss.set_progress(3, 120, 10)
    progress = loss.progress
    assert (progress.epoch, progress.global_step, progress.max_epochs) == (3, 120, 10)


# --- the views contract: forward_views, the module's one entry point -------------------------
SINGLE_VIEW = [CELoss, CSKDLoss, KDLoss, DKDLoss, DISTLoss]
TWO_VIEW = [CSKDFullLoss, MLKDLoss]


def _views(cls, batch) -> tuple[list, list | None, torch.Tensor]:
    """``cls.num_views``-independent inputs: two views for the two-view losses, else one."""
    zs, zt, y = batch
    student, teacher = [zs, 0.5 * zs.flip(0)], [zt, zt.flip(1)]
    views = 2 if cls in TWO_VIEW else 1
    return student[:views], None if cls is CELoss else teacher[:views], y


@pytest.mark.parametrize("cls", SINGLE_VIEW + TWO_VIEW, ids=lambda c: c.__name__)
def test_forward_views_is_the_loss_on_its_views(cls, batch):
    """Sequences of views in (lists or tuples alike): the same terms as the direct call with
    tensors (one view) or ``(weak, strong)`` pairs (two views)."""
    student, teacher, y = _views(cls, batch)
    if cls in TWO_VIEW:
        direct = cls()(tuple(student), tuple(teacher), y)
    else:
        direct = cls()(student[0], None if teacher is None else teacher[0], y)
    for as_sequence in (list, tuple):
        out = cls().forward_views(
            as_sequence(student), None if teacher is None else as_sequence(teacher), y
        )
        assert out.keys() == direct.keys()
        for key in out:
            assert torch.equal(out[key], direct[key]), key


@pytest.mark.parametrize("cls", SINGLE_VIEW + TWO_VIEW, ids=lambda c: c.__name__)
def test_forward_views_refuses_another_view_count(cls, batch):
    zs, zt, y = batch
    count = 1 if cls in TWO_VIEW else 2
    with pytest.raises(InputError, match=rf"{cls.__name__} takes .*two_view=True"):
        cls().forward_views([zs] * count, None if cls is CELoss else [zt] * count, y)


@pytest.mark.parametrize("cls", TWO_VIEW, ids=lambda c: c.__name__)
def test_a_two_view_loss_called_with_one_tensor_says_so(cls, batch):
    """A ``(B, C)`` tensor is not a (weak, strong) pair, also when it has two rows."""
    zs, zt, y = batch
    for rows in (8, 2):
        with pytest.raises(InputError, match="two-view loss.*two_view=True"):
            cls()(zs[:rows], zt[:rows], y[:rows])


# --- batch_level tells the truth --------------------------------------------------------------
@pytest.mark.parametrize("cls", SINGLE_VIEW + TWO_VIEW, ids=lambda c: c.__name__)
def test_batch_level_is_true_exactly_when_the_loss_depends_on_the_batch(cls, batch):
    """A per-sample loss on a batch is the size-weighted mean of its values on two parts of
    it; a batch-level one (which the application refuses at batch size 1 and which gathers
    under DDP) is not."""
    student, teacher, y = _views(cls, batch)

    def value(rows: slice) -> float:
        t = None if teacher is None else [v[rows] for v in teacher]
        return cls().forward_views([v[rows] for v in student], t, y[rows])["loss"].item()

    whole, first, rest = value(slice(None)), value(slice(0, 3)), value(slice(3, None))
    splits = whole == pytest.approx((3 * first + 5 * rest) / 8, rel=1e-9, abs=1e-12)
    assert cls.batch_level is not splits


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
