"""WTTM and the feature methods' functional forms against independent float64 implementations.

The references below are written from the papers' formulas with explicit loops over samples,
pairs and triplets (not the library's matrix forms), in float64; each library function is
checked against its reference on random inputs, in its gradient (torch.autograd.gradcheck in
float64) and on edge cases.
"""

from __future__ import annotations

import math

import pytest
import torch

from cskd_lightning.losses.feature_functional import at_loss, hcl_loss, pkt_loss, rkd_loss, sp_loss
from cskd_lightning.losses.functional import kd_loss, wttm_loss

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- references
def ref_wttm(zs: torch.Tensor, zt: torch.Tensor, gamma: float) -> float:
    total = 0.0
    for i in range(zs.shape[0]):
        pt = [math.exp(v) for v in zt[i].tolist()]
        pt = [v / sum(pt) for v in pt]
        powered = [v**gamma for v in pt]
        s = sum(powered)
        q = [v / s for v in powered]
        ps = [math.exp(v) for v in zs[i].tolist()]
        ps = [v / sum(ps) for v in ps]
        kl = sum(qj * math.log(qj / pj) for qj, pj in zip(q, ps, strict=True))
        total += s * kl
    return total / zs.shape[0]


def _avg_pool(f: torch.Tensor, side: int) -> torch.Tensor:
    """Average pooling to ``side x side`` for sides that divide the input's (explicit blocks)."""
    b, c, h, w = f.shape
    k = h // side
    out = torch.zeros(b, c, side, side, dtype=F64)
    for i in range(side):
        for j in range(side):
            out[:, :, i, j] = f[:, :, i * k : (i + 1) * k, j * k : (j + 1) * k].mean(dim=(2, 3))
    return out


def ref_at(g_s: list[torch.Tensor], g_t: list[torch.Tensor], p: float) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t, strict=True):
        side = min(f_s.shape[2], f_t.shape[2])
        f_s, f_t = _avg_pool(f_s, side), _avg_pool(f_t, side)
        b = f_s.shape[0]
        diffs = []
        for i in range(b):
            a_s = (f_s[i] ** p).mean(0).flatten()
            a_t = (f_t[i] ** p).mean(0).flatten()
            a_s = a_s / max(float(a_s.norm()), 1e-12)
            a_t = a_t / max(float(a_t.norm()), 1e-12)
            diffs.extend(((a_s - a_t) ** 2).tolist())
        total += sum(diffs) / len(diffs)
    return total


def _huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_rkd(f_s: torch.Tensor, f_t: torch.Tensor, dw: float, aw: float) -> float:
    b = f_s.shape[0]

    def distances(f: torch.Tensor) -> list[list[float]]:
        d = [[float((f[i] - f[j]).norm()) if i != j else 0.0 for j in range(b)] for i in range(b)]
        mean = sum(v for row in d for v in row if v > 0) / (b * (b - 1))
        return [[v / mean for v in row] for row in d]

    def angles(f: torch.Tensor) -> list[float]:
        out = []
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    e1 = f[j] - f[i]
                    e2 = f[k] - f[i]
                    n1, n2 = max(float(e1.norm()), 1e-12), max(float(e2.norm()), 1e-12)
                    out.append(float((e1 / n1) @ (e2 / n2)))
        return out

    ds, dt = distances(f_s), distances(f_t)
    loss_d = sum(_huber(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b**2
    a_s, a_t = angles(f_s), angles(f_t)
    loss_a = sum(_huber(x, y) for x, y in zip(a_s, a_t, strict=True)) / len(a_s)
    return dw * loss_d + aw * loss_a


def ref_pkt(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> float:
    b = f_s.shape[0]

    def conditional(f: torch.Tensor) -> list[list[float]]:
        rows = [f[i] / (float(f[i].norm()) + eps) for i in range(b)]
        k = [[(float(rows[i] @ rows[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = conditional(f_s), conditional(f_t)
    return (
        sum(
            pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
            for i in range(b)
            for j in range(b)
        )
        / b**2
    )


def ref_sp(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> float:
    total = 0.0
    for f_s, f_t in zip(g_s, g_t, strict=True):
        b = f_s.shape[0]
        fs, ft = f_s.reshape(b, -1), f_t.reshape(b, -1)

        def gram(f: torch.Tensor) -> list[list[float]]:
            n = f.shape[0]
            g = [[float(f[i] @ f[j]) for j in range(n)] for i in range(n)]
            return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

        gs, gt = gram(fs), gram(ft)
        total += sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2
    return total


def ref_hcl(fstudent: list[torch.Tensor], fteacher: list[torch.Tensor]) -> float:
    total = 0.0
    for fs, ft in zip(fstudent, fteacher, strict=True):
        h = fs.shape[2]
        loss = float(((fs - ft) ** 2).mean())
        weights, weight = [1.0], 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            weight /= 2
            weights.append(weight)
            loss += weight * float(((_avg_pool(fs, level) - _avg_pool(ft, level)) ** 2).mean())
        total += loss / sum(weights)
    return total


# --------------------------------------------------------------------------- golden values
def test_wttm_matches_the_reference() -> None:
    zs, zt = (
        torch.randn(6, 7, generator=_gen(1), dtype=F64),
        3 * torch.randn(6, 7, generator=_gen(2), dtype=F64),
    )
    for gamma in (0.2, 0.5, 1.0):
        assert wttm_loss(zs, zt, gamma).item() == pytest.approx(ref_wttm(zs, zt, gamma), rel=1e-10)


def test_wttm_at_gamma_one_is_kd_at_temperature_one() -> None:
    zs, zt = (
        torch.randn(5, 4, generator=_gen(3), dtype=F64),
        torch.randn(5, 4, generator=_gen(4), dtype=F64),
    )
    assert wttm_loss(zs, zt, 1.0).item() == pytest.approx(kd_loss(zs, zt, 1.0).item(), rel=1e-12)


def test_wttm_is_zero_when_the_student_matches_the_transformed_teacher() -> None:
    zt = torch.randn(4, 6, generator=_gen(5), dtype=F64)
    assert wttm_loss(0.3 * zt, zt, 0.3).item() == pytest.approx(0.0, abs=1e-12)


def test_wttm_weights_flatter_teachers_more() -> None:
    """Same KL, different teachers: the flatter teacher's power sum (s_i) is larger."""
    sharp, flat = (
        torch.tensor([[8.0, 0.0, 0.0]], dtype=F64),
        torch.tensor([[1.0, 0.0, 0.0]], dtype=F64),
    )
    zs = torch.zeros(1, 3, dtype=F64)
    w_sharp = wttm_loss(zs, sharp, 0.5) / kd_loss(zs, 0.5 * sharp, 1.0)
    w_flat = wttm_loss(zs, flat, 0.5) / kd_loss(zs, 0.5 * flat, 1.0)
    assert float(w_flat) > float(w_sharp) > 1.0


def test_at_matches_the_reference_with_pooling() -> None:
    g = _gen(6)
    g_s = [
        torch.randn(3, 4, 8, 8, generator=g, dtype=F64),
        torch.randn(3, 5, 4, 4, generator=g, dtype=F64),
    ]
    g_t = [
        torch.randn(3, 6, 4, 4, generator=g, dtype=F64),
        torch.randn(3, 2, 4, 4, generator=g, dtype=F64),
    ]
    for p in (2.0, 4.0):
        assert at_loss(g_s, g_t, p).item() == pytest.approx(ref_at(g_s, g_t, p), rel=1e-10)


def test_rkd_matches_the_reference() -> None:
    g = _gen(7)
    f_s, f_t = torch.randn(5, 6, generator=g, dtype=F64), torch.randn(5, 9, generator=g, dtype=F64)
    got = rkd_loss(f_s, f_t, False, 1e-12, 25.0, 50.0).item()
    assert got == pytest.approx(ref_rkd(f_s, f_t, 25.0, 50.0), rel=1e-9)


def test_rkd_of_a_scaled_copy_is_zero() -> None:
    """Distances are normalised by their mean and angles are scale-free: a scaled copy of the
    teacher's features has the teacher's relations."""
    f_t = torch.randn(6, 4, generator=_gen(8), dtype=F64)
    assert rkd_loss(3.0 * f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


def test_pkt_matches_the_reference() -> None:
    g = _gen(9)
    f_s, f_t = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, 8, generator=g, dtype=F64)
    assert pkt_loss(f_s, f_t).item() == pytest.approx(ref_pkt(f_s, f_t), rel=1e-9)


def test_pkt_of_a_zero_feature_row_is_finite() -> None:
    f_s = torch.randn(4, 3, generator=_gen(10), dtype=F64)
    f_s[1] = 0
    assert torch.isfinite(pkt_loss(f_s, torch.randn(4, 3, generator=_gen(11), dtype=F64)))


def test_sp_matches_the_reference() -> None:
    g = _gen(12)
    g_s = [torch.randn(5, 3, 2, 2, generator=g, dtype=F64)]
    g_t = [torch.randn(5, 7, 2, 2, generator=g, dtype=F64)]
    assert sp_loss(g_s, g_t).item() == pytest.approx(ref_sp(g_s, g_t), rel=1e-10)
    assert sp_loss(g_t, g_t).item() == 0.0


def test_hcl_matches_the_reference_at_every_size() -> None:
    g = _gen(13)
    sizes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1)]
    fs = [torch.randn(*s, generator=g, dtype=F64) for s in sizes]
    ft = [torch.randn(*s, generator=g, dtype=F64) for s in sizes]
    assert hcl_loss(fs, ft).item() == pytest.approx(ref_hcl(fs, ft), rel=1e-10)
    assert hcl_loss(ft, ft).item() == 0.0


def test_half_precision_inputs_compute_in_float32() -> None:
    g = _gen(14)
    f_s, f_t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    for fn in (
        lambda a, b: pkt_loss(a, b),
        lambda a, b: rkd_loss(a, b),
        lambda a, b: sp_loss([a], [b]),
    ):
        full, half = fn(f_s, f_t), fn(f_s.bfloat16(), f_t.bfloat16())
        assert half.dtype == torch.float32
        assert float(half) == pytest.approx(float(full), rel=0.1, abs=1e-3)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "name",
    ["wttm", "at", "rkd", "pkt", "sp", "hcl"],
)
def test_gradients_match_finite_differences(name: str) -> None:
    g = _gen(20)
    if name == "wttm":
        zt = torch.randn(3, 4, generator=g, dtype=F64)
        inputs = (torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda zs: wttm_loss(zs, zt, 0.4)  # noqa: E731
    elif name == "at":
        f_t = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
        inputs = (torch.randn(2, 2, 4, 4, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda f: at_loss([f], [f_t], 2.0)  # noqa: E731
    elif name == "rkd":
        f_t = torch.randn(4, 3, generator=g, dtype=F64)
        inputs = (torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda f: rkd_loss(f, f_t)  # noqa: E731
    elif name == "pkt":
        f_t = torch.randn(4, 3, generator=g, dtype=F64)
        inputs = (torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda f: pkt_loss(f, f_t)  # noqa: E731
    elif name == "sp":
        f_t = torch.randn(4, 3, generator=g, dtype=F64)
        inputs = (torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda f: sp_loss([f], [f_t])  # noqa: E731
    else:
        f_t = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
        inputs = (torch.randn(2, 3, 4, 4, generator=g, dtype=F64, requires_grad=True),)
        fn = lambda f: hcl_loss([f], [f_t])  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_rkd_passes_no_gradient_to_the_teacher() -> None:
    g = _gen(21)
    f_s = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    f_t = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    rkd_loss(f_s, f_t).backward()
    assert f_t.grad is None and f_s.grad is not None
