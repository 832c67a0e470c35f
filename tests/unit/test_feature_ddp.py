"""Real torch.distributed (2 CPU processes over gloo) for the feature methods: the batch-level
terms of RKD, PKT and SP, computed on features gathered from every process, give each process
the loss (and, after DDP's averaging, the gradient) of one process holding the whole batch;
CRD's memories stay identical on every process and equal to one process's after the same
batch.
"""

from __future__ import annotations

import pytest
import torch
from helpers import run_gloo

WORLD = 2
BATCH, IN, CLASSES, TEACHER_DIM = 8, 5, 6, 7
N_SAMPLES = 20
F64 = torch.float64
METHODS = ("rkd", "pkt", "sp")


def _problem() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(BATCH, IN, generator=gen, dtype=F64),
        "teacher": torch.randn(BATCH, TEACHER_DIM, generator=gen, dtype=F64),
        "y": torch.randint(0, CLASSES, (BATCH,), generator=gen),
        "weight": torch.randn(CLASSES, IN, generator=gen, dtype=F64),
        "index": torch.randperm(N_SAMPLES, generator=gen)[:BATCH],
    }


def _loss(method: str):
    from cskd_lightning.losses import PKTLoss, RKDLoss, SPLoss

    return {"rkd": RKDLoss, "pkt": PKTLoss, "sp": SPLoss}[method]()


def _features(method: str, student: torch.Tensor, teacher: torch.Tensor):
    from cskd_lightning.losses import FeatureBatch

    if method == "sp":  # SP reads feats[-1], a map
        return FeatureBatch(
            {"feats": [student.reshape(*student.shape, 1, 1)]},
            {"feats": [teacher.reshape(*teacher.shape, 1, 1)]},
        )
    return FeatureBatch({"pooled_feat": [student]}, {"pooled_feat": [teacher]})


def _step(method: str, model: torch.nn.Module, part: slice) -> dict[str, torch.Tensor]:
    p = _problem()
    loss = _loss(method)
    loss.prepare({}, {})
    logits = model(p["x"][part])
    terms = loss(
        logits, logits.detach(), p["y"][part], _features(method, logits, p["teacher"][part])
    )
    terms["loss"].backward()
    inner = model.module if hasattr(model, "module") else model
    return {
        "term": terms[method].detach(),
        "loss": terms["loss"].detach(),
        "grad": inner.weight.grad,
    }


def _model() -> torch.nn.Linear:
    model = torch.nn.Linear(IN, CLASSES, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(_problem()["weight"])
    return model


def _crd_step(part: slice) -> dict[str, torch.Tensor]:
    from cskd_lightning.losses import CRDLoss, FeatureBatch

    p = _problem()
    torch.manual_seed(1)  # the same embeddings and memories on every process
    loss = CRDLoss(feat_dim=4, num_negatives=5, num_samples=N_SAMPLES)
    f_s, f_t = p["x"].float(), p["teacher"].float()
    loss.prepare({"pooled_feat": [f_s]}, {"pooled_feat": [f_t]})
    initial = loss.memory_s.clone()
    features = FeatureBatch(
        {"pooled_feat": [f_s[part]]}, {"pooled_feat": [f_t[part]]}, p["index"][part]
    )
    logits = torch.zeros(f_s[part].shape[0], CLASSES)
    loss(logits, logits, p["y"][part], features)
    return {
        "memory_s": loss.memory_s.clone(),
        "memory_t": loss.memory_t.clone(),
        "initial_s": initial,
    }


def _worker(rank: int) -> dict[str, object]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results: dict[str, object] = {m: _step(m, DDP(_model()), part) for m in METHODS}
    results["crd"] = _crd_step(part)
    return results


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, object]]:
    return run_gloo(_worker, world=WORLD)


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_compute_the_loss_and_gradient_of_one_process(ranks, method: str) -> None:
    whole = _step(method, _model(), slice(0, BATCH))
    for rank in ranks:
        got = rank[method]
        torch.testing.assert_close(got["term"], whole["term"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["grad"], whole["grad"], rtol=1e-9, atol=1e-12)


def test_crd_memories_stay_identical_across_processes(ranks) -> None:
    whole = _crd_step(slice(0, BATCH))
    for name in ("memory_s", "memory_t"):
        torch.testing.assert_close(ranks[0]["crd"][name], ranks[1]["crd"][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["crd"][name], whole[name], rtol=1e-6, atol=1e-7)
    # The rows of the whole batch's samples (both processes') moved; the others did not.
    moved = (ranks[0]["crd"]["memory_s"] != whole["initial_s"]).any(dim=1)
    expected = torch.zeros(N_SAMPLES, dtype=torch.bool)
    expected[_problem()["index"]] = True
    assert torch.equal(moved, expected)
