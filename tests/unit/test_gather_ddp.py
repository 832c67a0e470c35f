"""Real torch.distributed (2 CPU processes over gloo): gathering makes N x B/N behave as 1 x B.

One launch of 2 worker processes (forked: about a second) runs every scenario; the parent
compares their results with a single-process computation on the whole batch.
"""

from __future__ import annotations

import pytest
import torch
from helpers import run_gloo

WORLD = 2
BATCH, FEATURES, CLASSES = 16, 6, 5
UNEQUAL = (3, 5)  # per-process batch sizes for the unequal-split scenarios
F64 = torch.float64


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Inputs, teacher logits, labels and the student's initial weights (same in every process)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, FEATURES, generator=gen, dtype=F64)
    teacher_logits = 3 * torch.randn(BATCH, CLASSES, generator=gen, dtype=F64)
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    init = {
        "weight": torch.randn(CLASSES, FEATURES, generator=gen, dtype=F64),
        "bias": torch.randn(CLASSES, generator=gen, dtype=F64),
    }
    return x, teacher_logits, y, init


def _student() -> torch.nn.Linear:
    student = torch.nn.Linear(FEATURES, CLASSES).to(F64)
    student.load_state_dict(_problem()[3])
    return student


def _step(model, loss_fn, x, teacher_logits, y) -> dict[str, torch.Tensor]:
    """One forward/backward; the loss terms and the (DDP-averaged) parameter gradients."""
    out = loss_fn(model(x), teacher_logits, y)
    out["loss"].backward()
    result = {k: v.detach().clone() for k, v in out.items()}
    params = model.module if hasattr(model, "module") else model
    result["grad_weight"] = params.weight.grad.clone()
    result["grad_bias"] = params.bias.grad.clone()
    return result


def _worker(rank: int) -> dict[str, object]:
    """Rank ``rank``'s part of every scenario, in a 2-process gloo group (helpers.run_gloo)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from cskd_lightning.losses import CSKDLoss
    from cskd_lightning.losses.distributed import distributed_world_size, gather_batch

    assert distributed_world_size() == WORLD
    x, zt, y, _ = _problem()
    results: dict[str, object] = {}

    # Equal split 8/8, CE + CSKD + CSWT, with and without gathering.
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    for gather in (True, False):
        model = DDP(_student())
        results[f"equal_gather={gather}"] = _step(
            model, CSKDLoss(gather=gather), x[part], zt[part], y[part]
        )

    # Unequal split 3/5 of the first 8 samples, distillation terms only (CE's per-process
    # mean would weight the two processes differently; the gathered terms must not).
    start = sum(UNEQUAL[:rank])
    part = slice(start, start + UNEQUAL[rank])
    model = DDP(_student())
    unequal = CSKDLoss(ce_weight=0.0)
    unequal.gather_same_size = False
    results["unequal_kd_only"] = _step(model, unequal, x[part], zt[part], y[part])

    # gather_batch itself on unequal sizes: values in rank order, and a backward that sums
    # the gradient every process sends to this process's rows.
    local = torch.arange(UNEQUAL[rank] * CLASSES, dtype=F64).reshape(-1, CLASSES) + 100 * rank
    local.requires_grad_()
    gathered = gather_batch(local, same_size=False)
    weights = torch.arange(sum(UNEQUAL) * CLASSES, dtype=F64).reshape(-1, CLASSES)
    ((rank + 1) * weights * gathered).sum().backward()
    results["gather_values"] = gathered.detach()
    results["gather_grad"] = local.grad.clone()

    return results


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    import cskd_lightning.losses  # noqa: F401 - imported once, before the workers fork

    return run_gloo(_worker, world=WORLD)


def _single_process(loss_kwargs: dict, rows: slice) -> dict[str, torch.Tensor]:
    from cskd_lightning.losses import CSKDLoss

    x, zt, y, _ = _problem()
    return _step(_student(), CSKDLoss(**loss_kwargs), x[rows], zt[rows], y[rows])


def _mean_over_ranks(results: list[dict], scenario: str, key: str) -> torch.Tensor:
    return torch.stack([r[scenario][key] for r in results]).mean(0)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.timeout(120)
def test_gathered_loss_and_gradient_equal_single_process(ddp_results):
    single = _single_process({}, slice(0, BATCH))
    scenario = "equal_gather=True"
    for rank in (0, 1):
        # DDP averages the gradients: every process holds the single-process gradient.
        for key in ("grad_weight", "grad_bias"):
            torch.testing.assert_close(
                ddp_results[rank][scenario][key], single[key], rtol=1e-5, atol=1e-8
            )
        # The batch-axis terms are global: every process sees the same values.
        for key in ("cs", "cs_cswt", "cos_mean", "cswt_t_mean", "cswt_t_min", "cswt_t_max"):
            torch.testing.assert_close(
                ddp_results[rank][scenario][key], single[key], rtol=1e-5, atol=1e-8
            )
    # CE is per process; with equal slices its mean over processes is the global CE.
    for key in ("loss", "ce"):
        torch.testing.assert_close(
            _mean_over_ranks(ddp_results, scenario, key), single[key], rtol=1e-5, atol=1e-8
        )


@pytest.mark.timeout(120)
def test_without_gather_the_result_differs(ddp_results):
    single = _single_process({}, slice(0, BATCH))
    scenario = "equal_gather=False"
    assert not _close(_mean_over_ranks(ddp_results, scenario, "loss"), single["loss"])
    assert not _close(ddp_results[0][scenario]["grad_weight"], single["grad_weight"])
    assert not _close(ddp_results[0][scenario]["cs"], ddp_results[1][scenario]["cs"])
    # ... and each process's ungathered value is just the loss of its own slice.
    for rank in (0, 1):
        local = _single_process({}, slice(rank * 8, rank * 8 + 8))
        torch.testing.assert_close(ddp_results[rank][scenario]["cs"], local["cs"])


@pytest.mark.timeout(120)
def test_unequal_process_batches(ddp_results):
    single = _single_process({"ce_weight": 0.0}, slice(0, sum(UNEQUAL)))
    for rank in (0, 1):
        result = ddp_results[rank]["unequal_kd_only"]
        for key in ("loss", "cs", "cs_cswt", "cswt_t_mean", "grad_weight", "grad_bias"):
            torch.testing.assert_close(result[key], single[key], rtol=1e-5, atol=1e-8)


@pytest.mark.timeout(120)
def test_gather_batch_unequal_sizes_values_and_gradient(ddp_results):
    parts = [
        torch.arange(n * CLASSES, dtype=F64).reshape(-1, CLASSES) + 100 * r
        for r, n in enumerate(UNEQUAL)
    ]
    expected = torch.cat(parts)
    weights = torch.arange(sum(UNEQUAL) * CLASSES, dtype=F64).reshape(-1, CLASSES)
    for rank in (0, 1):
        assert ddp_results[rank]["gather_values"].shape == (sum(UNEQUAL), CLASSES)
        assert torch.equal(ddp_results[rank]["gather_values"], expected)
        # Rank r's loss is (r + 1) * <weights, gathered>: the summed gradient is 3 * weights.
        start = sum(UNEQUAL[:rank])
        rows = weights[start : start + UNEQUAL[rank]]
        assert torch.equal(ddp_results[rank]["gather_grad"], 3 * rows)


def test_gather_batch_is_identity_without_process_group():
    from cskd_lightning.losses.distributed import distributed_world_size, gather_batch

    assert distributed_world_size() == 1
    t = torch.randn(4, 3)
    assert gather_batch(t) is t
