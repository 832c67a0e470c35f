"""Shared fixtures: an independent float64 reference of the method's formulas (docs/method.md).

The reference uses numpy and plain loops on purpose: it shares no code with the library, so a
test that compares the two checks the math, not one implementation against itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

EPS = 1e-8  # the cosine's eps: <a, b> / (||a|| * ||b|| + eps)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _temps(temperature, batch: int) -> list[float]:
    t = _np(temperature).reshape(-1)
    return [float(t[0])] * batch if t.size == 1 else [float(v) for v in t]


def ref_cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + EPS)


def ref_softmax(logits, temperature=1.0) -> np.ndarray:
    """``P[i, :] = softmax(z[i, :] / T_i)``, row by row."""
    z = _np(logits)
    temps = _temps(temperature, z.shape[0])
    out = np.empty_like(z)
    for i in range(z.shape[0]):
        row = z[i] / temps[i]
        e = [math.exp(v - row.max()) for v in row]
        out[i] = [v / sum(e) for v in e]
    return out


def ref_cskd(zs, zt, temperature, alpha=2.0) -> float:
    """``alpha * mean(T)^2 * (1 - (1/C) sum_j cos(P_s[:, j], P_t[:, j]))``."""
    ps, pt = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
    temps = _temps(temperature, ps.shape[0])
    c = ps.shape[1]
    mean_cos = sum(ref_cos(ps[:, j], pt[:, j]) for j in range(c)) / c
    return alpha * (sum(temps) / len(temps)) ** 2 * (1.0 - mean_cos)


def ref_cswt(zs, zt, t_low=2.0, t_high=6.0, tol=1e-6) -> np.ndarray:
    """``T_i = t_low + (t_high - t_low) (max c - c_i) / (max c - min c)``; midpoint if flat."""
    ps, pt = ref_softmax(zs), ref_softmax(zt)
    c = [ref_cos(ps[i], pt[i]) for i in range(ps.shape[0])]
    if max(c) - min(c) <= tol:
        return np.full(len(c), (t_low + t_high) / 2)
    return np.array([t_low + (t_high - t_low) * (max(c) - ci) / (max(c) - min(c)) for ci in c])


def ref_kd(zs, zt, temperature) -> float:
    """``mean_i T_i^2 * KL(p_t[i] || p_s[i])``."""
    ps, pt = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
    temps = _temps(temperature, ps.shape[0])
    total = 0.0
    for i in range(ps.shape[0]):
        kl = sum(
            q * (math.log(q) - math.log(p)) for p, q in zip(ps[i], pt[i], strict=True) if q > 0
        )
        total += temps[i] ** 2 * kl
    return total / ps.shape[0]


def _gram_loss(gs: np.ndarray, gt: np.ndarray) -> float:
    return 1.0 - sum(ref_cos(gt[r], gs[r]) for r in range(gs.shape[0])) / gs.shape[0]


def ref_class_corr(zs, zt, temperature) -> float:
    """``G = P^T P`` (C x C); ``1 - mean_r cos(G_t[r], G_s[r])``."""
    ps, pt = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
    return _gram_loss(ps.T @ ps, pt.T @ pt)


def ref_batch_corr(zs, zt, temperature) -> float:
    """``G = P P^T`` (B x B); ``1 - mean_r cos(G_t[r], G_s[r])``."""
    ps, pt = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
    return _gram_loss(ps @ ps.T, pt @ pt.T)


def ref_ce(logits, targets) -> float:
    z = _np(logits)
    y = _np(targets).astype(int)
    total = 0.0
    for i in range(z.shape[0]):
        m = z[i].max()
        total += m + math.log(sum(math.exp(v - m) for v in z[i])) - z[i, y[i]]
    return total / z.shape[0]


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """No test writes to the real per-user cache: the default teacher cache
    (``CSKD_CACHE_DIR``, else the platform's user cache directory, which follows
    ``XDG_CACHE_HOME``) points into the session's temporary directory, for this process and
    every command a test starts. A test of the default itself removes ``CSKD_CACHE_DIR``
    (monkeypatch) and finds the cache under this ``XDG_CACHE_HOME``."""
    import os

    root = tmp_path_factory.mktemp("user_cache")
    saved = {k: os.environ.get(k) for k in ("CSKD_CACHE_DIR", "XDG_CACHE_HOME")}
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ["CSKD_CACHE_DIR"] = str(root / "cskd")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny tensors on a shared 2-core machine: extra intra-op threads only contend (OpenMP
    spin-waits make a 30 ms gradcheck take 2 s under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real ``train()`` run of the digits default with ``FAST`` settings, for the tests that
    only read a finished run (its summary, student.pt, checkpoints); its run directory."""
    from app_helpers import FAST, compose_train

    from cskd_lightning.app.train import train

    tmp = tmp_path_factory.mktemp("digits_run")
    train(compose_train(FAST, tmp))
    return tmp / "run"


@pytest.fixture
def no_weight_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything asks torchvision for pretrained weights (nothing is downloaded)."""
    import torchvision.models._api as tv_api

    def refuse(url: str, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The float64 reference implementation of the method's formulas."""
    return SimpleNamespace(
        cos=ref_cos,
        softmax=ref_softmax,
        cskd=ref_cskd,
        cswt=ref_cswt,
        kd=ref_kd,
        class_corr=ref_class_corr,
        batch_corr=ref_batch_corr,
        ce=ref_ce,
    )
