"""The functional losses against an independent float64 reference (see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from cskd_lightning.losses import (
    batch_correlation_loss,
    class_correlation_loss,
    cskd_loss,
    cswt_temperature,
    kd_loss,
)

F64 = torch.float64
REL, ABS = 1e-6, 1e-12


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


def _one_hot_logits(batch: int, classes: int, peak: float = 30.0) -> torch.Tensor:
    z = torch.zeros(batch, classes, dtype=F64)
    z[torch.arange(batch), torch.arange(batch) % classes] = peak
    return z


def _case(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "random":
        return _randn(1, 8, 10), _randn(2, 8, 10, scale=2.0)
    if name == "batch_of_one":
        return _randn(3, 1, 10), _randn(4, 1, 10, scale=2.0)
    if name == "two_classes":
        return _randn(5, 6, 2), _randn(6, 6, 2, scale=3.0)
    if name == "identical":
        z = _randn(7, 8, 10, scale=2.0)
        return z.clone(), z.clone()
    if name == "one_hot_teacher":
        return _randn(8, 8, 10), _one_hot_logits(8, 10)
    if name == "c100":
        return _randn(9, 16, 100, scale=2.0), _randn(10, 16, 100, scale=3.0)
    raise KeyError(name)


CASES = ["random", "batch_of_one", "two_classes", "identical", "one_hot_teacher", "c100"]


def _per_sample_t(batch: int) -> torch.Tensor:
    return torch.linspace(2.0, 6.0, batch, dtype=F64).flip(0) if batch > 1 else torch.tensor([3.0])


# --- golden values against the float64 reference ------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cskd_loss_float_temperature_matches_reference(ref, case, temperature):
    zs, zt = _case(case)
    for alpha in (2.0, 0.5):
        got = cskd_loss(zs, zt, temperature, alpha=alpha)
        assert got.item() == pytest.approx(ref.cskd(zs, zt, temperature, alpha), rel=REL, abs=ABS)


@pytest.mark.parametrize("case", CASES)
def test_cskd_loss_per_sample_temperature_matches_reference(ref, case):
    zs, zt = _case(case)
    for temps in (_per_sample_t(zs.shape[0]), torch.as_tensor(ref.cswt(zs, zt))):
        got = cskd_loss(zs, zt, temps)
        assert got.item() == pytest.approx(ref.cskd(zs, zt, temps), rel=REL, abs=ABS)


def test_cskd_per_sample_scale_is_mean_temperature_squared(ref):
    # The factor is alpha * mean(T_i)^2, not mean(T_i^2): 2 * 4^2 = 32, not 2 * 20 = 40.
    zs, zt = _case("random")
    temps = torch.tensor([2.0, 6.0] * 4, dtype=F64)
    ps, pt = ref.softmax(zs, temps), ref.softmax(zt, temps)
    mean_cos = sum(ref.cos(ps[:, j], pt[:, j]) for j in range(10)) / 10
    assert cskd_loss(zs, zt, temps).item() == pytest.approx(32.0 * (1 - mean_cos), rel=REL)


def test_cskd_constant_temperature_vector_equals_float(ref):
    zs, zt = _case("random")
    vec = torch.full((8,), 4.0, dtype=F64)
    assert cskd_loss(zs, zt, vec).item() == pytest.approx(cskd_loss(zs, zt, 4.0).item(), rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_cswt_temperature_matches_reference(ref, case):
    zs, zt = _case(case)
    for t_low, t_high in ((2.0, 6.0), (1.0, 3.0)):
        got = cswt_temperature(zs, zt, t_low, t_high)
        expected = torch.as_tensor(ref.cswt(zs, zt, t_low, t_high))
        torch.testing.assert_close(got, expected, rtol=REL, atol=ABS)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_kd_loss_matches_reference(ref, case, per_sample):
    zs, zt = _case(case)
    temps = [_per_sample_t(zs.shape[0])] if per_sample else [1.0, 4.0]
    for t in temps:
        assert kd_loss(zs, zt, t).item() == pytest.approx(ref.kd(zs, zt, t), rel=REL, abs=ABS)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_correlation_losses_match_reference(ref, case, per_sample):
    zs, zt = _case(case)
    temps = [_per_sample_t(zs.shape[0])] if per_sample else [1.0, 4.0]
    for t in temps:
        got_c = class_correlation_loss(zs, zt, t).item()
        got_b = batch_correlation_loss(zs, zt, t).item()
        assert got_c == pytest.approx(ref.class_corr(zs, zt, t), rel=REL, abs=ABS)
        assert got_b == pytest.approx(ref.batch_corr(zs, zt, t), rel=REL, abs=ABS)


def test_pinned_golden_values():
    """Scalars computed once by the float64 reference: a refactor must not drift them."""
    torch.manual_seed(0)
    zs = torch.randn(8, 10, dtype=F64)
    zt = 2 * torch.randn(8, 10, dtype=F64)
    temps = cswt_temperature(zs, zt)
    expected_temps = [
        3.2648301962181576,
        5.897113302195569,
        2.0,
        5.284064970326531,
        6.0,
        4.820956518319681,
        5.575453066122597,
        5.503584069769829,
    ]
    torch.testing.assert_close(temps, torch.tensor(expected_temps, dtype=F64), rtol=1e-9, atol=0)
    assert cskd_loss(zs, zt, 4.0).item() == pytest.approx(2.98363241274523, rel=1e-9)
    assert cskd_loss(zs, zt, temps).item() == pytest.approx(3.8772668910861667, rel=1e-9)
    assert kd_loss(zs, zt, 4.0).item() == pytest.approx(2.0175077257539042, rel=1e-9)
    class_corr, batch_corr = (
        class_correlation_loss(zs, zt, 4.0),
        batch_correlation_loss(zs, zt, 4.0),
    )
    assert class_corr.item() == pytest.approx(0.019965910570655665, rel=1e-9)
    assert batch_corr.item() == pytest.approx(0.003946218324840434, rel=1e-9)


# --- properties of L_cs -----------------------------------------------------------------------


def test_cskd_is_zero_for_identical_logits():
    # Not exactly 0: with the eps outside the norms, L = alpha T^2 mean_j eps / (|P[:, j]|^2 + eps),
    # which is below 1e-6 here (few classes, B=16) but ~2e-4 at C=100 (the reference agrees; see
    # the "identical" golden case).
    z = _randn(11, 16, 4, scale=2.0)
    assert 0.0 <= cskd_loss(z, z.clone(), 4.0).item() < 1e-6
    assert 0.0 <= cskd_loss(z.float(), z.float(), 4.0).item() < 1e-6


def test_cskd_is_alpha_t_squared_scaled(ref):
    zs, zt = _case("random")
    for t in (1.0, 2.0, 4.0):
        ps, pt = ref.softmax(zs, t), ref.softmax(zt, t)
        distance = 1 - sum(ref.cos(ps[:, j], pt[:, j]) for j in range(10)) / 10
        for alpha in (0.5, 2.0, 3.0):
            got = cskd_loss(zs, zt, t, alpha=alpha).item()
            assert got / (alpha * t * t) == pytest.approx(distance, rel=REL)


# --- gradients ------------------------------------------------------------------------------


def _grad_inputs(seed: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    zs = _randn(seed, 4, 5).requires_grad_()
    zt = _randn(seed + 1, 4, 5, scale=2.0).requires_grad_()
    return zs, zt


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, t: cskd_loss(s, t, 4.0),
        lambda s, t: cskd_loss(s, t, torch.tensor([2.0, 3.0, 5.0, 6.0], dtype=F64)),
        lambda s, t: kd_loss(s, t, 4.0),
        lambda s, t: kd_loss(s, t, torch.tensor([2.0, 3.0, 5.0, 6.0], dtype=F64)),
        lambda s, t: class_correlation_loss(s, t, 4.0),
        lambda s, t: batch_correlation_loss(s, t, 4.0),
        lambda s, t: class_correlation_loss(s, t, torch.tensor([2.0, 3.0, 5.0, 6.0], dtype=F64)),
        lambda s, t: batch_correlation_loss(s, t, torch.tensor([2.0, 3.0, 5.0, 6.0], dtype=F64)),
    ],
    ids=[
        "cskd_float_T",
        "cskd_per_sample_T",
        "kd_float_T",
        "kd_per_sample_T",
        "class_corr",
        "batch_corr",
        "class_corr_per_sample_T",
        "batch_corr_per_sample_T",
    ],
)
def test_gradcheck(fn):
    assert torch.autograd.gradcheck(fn, _grad_inputs())


def test_no_gradient_through_per_sample_temperature():
    zs, zt = _grad_inputs()
    temps = torch.tensor([2.0, 3.0, 5.0, 6.0], dtype=F64, requires_grad=True)
    cskd_loss(zs, zt, temps).backward()
    assert temps.grad is None
    assert zs.grad is not None and torch.isfinite(zs.grad).all()


# --- CSWT -------------------------------------------------------------------------------------


def test_cswt_has_no_gradient():
    zs, zt = _grad_inputs()
    temps = cswt_temperature(zs, zt)
    assert not temps.requires_grad and temps.grad_fn is None


@pytest.mark.parametrize("case", ["batch_of_one", "identical"])
def test_cswt_midpoint_when_similarities_do_not_spread(case):
    zs, zt = _case(case)
    for dtype in (F64, torch.float32):
        temps = cswt_temperature(zs.to(dtype), zt.to(dtype), 2.0, 6.0)
        assert torch.equal(temps, torch.full_like(temps, 4.0))
    midpoint = torch.full((zs.shape[0],), 1.5, dtype=F64)
    assert torch.equal(cswt_temperature(zs, zt, 1.0, 2.0), midpoint)


def test_cswt_most_similar_gets_t_low_least_gets_t_high(ref):
    zs, zt = _case("random")
    ps, pt = ref.softmax(zs), ref.softmax(zt)
    c = torch.tensor([ref.cos(ps[i], pt[i]) for i in range(8)])
    temps = cswt_temperature(zs, zt, 2.0, 6.0)
    assert temps[c.argmax()].item() == 2.0
    assert temps[c.argmin()].item() == 6.0
    assert ((temps >= 2.0) & (temps <= 6.0)).all()
    # Monotone: more similar -> lower temperature.
    order = c.argsort()
    assert (temps[order].diff() <= 0).all()


@pytest.mark.parametrize("t_low, t_high", [(6.0, 2.0), (0.0, 2.0), (-1.0, 2.0)])
def test_cswt_invalid_bounds_raise(t_low, t_high):
    zs, zt = _case("random")
    with pytest.raises(ValueError, match="t_low"):
        cswt_temperature(zs, zt, t_low, t_high)


# --- dtypes and autocast -------------------------------------------------------------------------


def _all_losses(zs, zt):
    return {
        "cskd": cskd_loss(zs, zt, 4.0),
        "cskd_cswt": cskd_loss(zs, zt, cswt_temperature(zs, zt)),
        "kd": kd_loss(zs, zt, 4.0),
        "class_corr": class_correlation_loss(zs, zt, 4.0),
        "batch_corr": batch_correlation_loss(zs, zt, 4.0),
        "cswt": cswt_temperature(zs, zt),
    }


def test_float64_in_float64_out():
    zs, zt = _case("random")
    for name, value in _all_losses(zs, zt).items():
        assert value.dtype == F64, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_upcast(dtype):
    zs, zt = (z.to(dtype) for z in _case("random"))
    upcast = _all_losses(zs.float(), zt.float())
    for name, value in _all_losses(zs, zt).items():
        assert value.dtype == torch.float32, name
        # Same (rounded) inputs, computed in float32: identical up to float32 rounding.
        torch.testing.assert_close(value, upcast[name], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_losses_are_finite_and_close_to_float32():
    zs, zt = (z.float() for z in _case("random"))
    expected = _all_losses(zs, zt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _all_losses(zs.bfloat16(), zt.bfloat16())
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, expected[name], rtol=1e-2, atol=1e-4, msg=name)


# --- invalid arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature",
    [0.0, -1.0, torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([1.0, -2.0, 2.0, 3.0])],
    ids=["zero", "negative", "vector_with_zero", "vector_with_negative"],
)
@pytest.mark.parametrize("fn", [cskd_loss, kd_loss, class_correlation_loss, batch_correlation_loss])
def test_non_positive_temperature_raises(fn, temperature):
    zs, zt = _randn(13, 4, 5), _randn(14, 4, 5)
    with pytest.raises(ValueError, match="temperature"):
        fn(zs, zt, temperature)


def test_wrong_shapes_raise():
    zs, zt = _randn(13, 4, 5), _randn(14, 4, 5)
    with pytest.raises(ValueError, match="temperature"):
        cskd_loss(zs, zt, torch.tensor([1.0, 2.0, 3.0]))
    for fn in (cskd_loss, kd_loss, class_correlation_loss, batch_correlation_loss):
        with pytest.raises(ValueError, match="same shape"):
            fn(zs, zt[:, :4], 4.0)
    with pytest.raises(ValueError, match="same shape"):
        cswt_temperature(zs, zt[:3])


def test_nan_temperature_tensor_propagates_but_nan_float_raises():
    # A NaN from CSWT on NaN logits must reach the loss (the module reports non-finite terms);
    # a NaN given as the configured temperature is an argument error.
    zs, zt = _randn(13, 4, 5), _randn(14, 4, 5)
    assert torch.isnan(cskd_loss(zs, zt, torch.tensor([2.0, float("nan"), 3.0, 4.0])))
    zs[1, 2] = float("nan")
    assert torch.isnan(cswt_temperature(zs, zt)).all()
    assert torch.isnan(cskd_loss(zs, zt, cswt_temperature(zs, zt)))
    with pytest.raises(ValueError, match="temperature"):
        cskd_loss(zs, zt, float("nan"))
