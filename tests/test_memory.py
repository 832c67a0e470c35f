"""The logit memory of CSKDLoss (``memory_size > 0``): batch-axis terms on batch + memory.

Expected values come from the float64 reference in conftest.py (numpy and plain loops, no
library code) applied to the extended batch ``[current rows; memory rows]``, where the test
builds the memory itself from the batches it fed in.
"""

from __future__ import annotations

import csv
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from app_helpers import FAST, read_summary, run_cli

from cskd_lightning.losses import CSKDLoss
from cskd_lightning.losses.functional import cross_entropy, cskd_loss, cswt_temperature
from cskd_lightning.losses.memory import LogitMemory

F64 = torch.float64
CLASSES = 5


def batch(seed: int, rows: int = 4, classes: int = CLASSES, dtype=F64):
    """``(student, teacher, targets)`` logits of one synthetic batch."""
    gen = torch.Generator().manual_seed(seed)
    zs = 2 * torch.randn(rows, classes, generator=gen, dtype=dtype)
    zt = 3 * torch.randn(rows, classes, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (rows,), generator=gen)
    return zs, zt, y


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(F64).numpy()


def reference_terms(ref, zs, zt, y, mem_s, mem_t, standardize: bool = False) -> dict[str, float]:
    """CE on the current rows; L_cs(4), CSWT and L_cs(T_i) on ``[current; memory]``."""
    ext_s = np.concatenate([np64(zs), mem_s]) if len(mem_s) else np64(zs)
    ext_t = np.concatenate([np64(zt), mem_t]) if len(mem_t) else np64(zt)
    temps = ref.cswt(ext_s, ext_t)  # always on the raw logits
    if standardize:

        def z_score(z):
            return (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)

        ext_s, ext_t = z_score(ext_s), z_score(ext_t)
    cs = ref.cskd(ext_s, ext_t, 4.0)
    cs_cswt = ref.cskd(ext_s, ext_t, temps)
    ce = ref.ce(zs, y)
    return {
        "loss": ce + cs + cs_cswt,
        "ce": ce,
        "cs": cs,
        "cs_cswt": cs_cswt,
        "cswt_t_mean": float(np.mean(temps)),
        "cswt_t_min": float(np.min(temps)),
        "cswt_t_max": float(np.max(temps)),
    }


# ------------------------------------------------------------------------- memory_size = 0
@pytest.mark.parametrize(
    "kwargs", [{}, {"cswt": False}, {"logit_standardization": True}, {"ce_weight": 0.5}]
)
def test_memory_size_zero_is_bit_identical_to_the_plain_loss(kwargs) -> None:
    plain, zero = CSKDLoss(**kwargs), CSKDLoss(memory_size=0, **kwargs)
    assert zero.memory is None
    for step in range(3):  # repeated calls: nothing accumulates
        zs, zt, y = batch(step, rows=6, dtype=torch.float32)
        a_in, b_in = zs.clone().requires_grad_(), zs.clone().requires_grad_()
        a, b = plain(a_in, zt, y), zero(b_in, zt, y)
        assert a.keys() == b.keys()
        assert "memory_rows" not in b
        for key in a:
            assert torch.equal(a[key], b[key]), key
        a["loss"].backward()
        b["loss"].backward()
        assert torch.equal(a_in.grad, b_in.grad)
    assert zero.state_dict().keys() == plain.state_dict().keys()


def test_memory_size_zero_equals_the_functional_composition() -> None:
    zs, zt, y = batch(3, rows=8, dtype=torch.float32)
    out = CSKDLoss(memory_size=0)(zs, zt, y)
    temps = cswt_temperature(zs, zt, 2.0, 6.0)
    cs, cs_cswt = cskd_loss(zs, zt, 4.0, 2.0), cskd_loss(zs, zt, temps, 2.0)
    assert torch.equal(out["cs"], cs)
    assert torch.equal(out["cs_cswt"], cs_cswt)
    assert torch.equal(out["loss"], cross_entropy(zs, y) + (cs + cs_cswt))
    assert torch.equal(out["cswt_t_mean"], temps.mean())


# ------------------------------------------------------------------------- the extended batch
@pytest.mark.parametrize("standardize", [False, True])
def test_extended_batch_matches_the_float64_reference(ref, standardize: bool) -> None:
    size = 7
    loss = CSKDLoss(memory_size=size, logit_standardization=standardize)
    seen_s, seen_t = np.zeros((0, CLASSES)), np.zeros((0, CLASSES))
    for step in range(4):  # memory rows used: 0, 4, 7, 7
        zs, zt, y = batch(10 + step)
        mem_s, mem_t = seen_s[-size:], seen_t[-size:]
        out = loss(zs, zt, y)
        expected = reference_terms(ref, zs, zt, y, mem_s, mem_t, standardize)
        for key, value in expected.items():
            assert float(out[key]) == pytest.approx(value, rel=1e-10, abs=1e-12), (step, key)
        assert float(out["memory_rows"]) == len(mem_s) == min(4 * step, size)
        seen_s, seen_t = np.concatenate([seen_s, np64(zs)]), np.concatenate([seen_t, np64(zt)])


@pytest.mark.parametrize("warmup", [1, 3])
def test_memory_is_filled_but_not_read_during_its_warm_up(ref, warmup: int) -> None:
    """``memory_warmup_steps=W``: the first W training calls are the plain method on the batch
    (float64 reference without memory rows), from call W + 1 on the reference on the batch with
    the last ``size`` rows the test fed in, which include the warm-up batches."""
    size = 7
    loss = CSKDLoss(memory_size=size, memory_warmup_steps=warmup)
    seen_s, seen_t = np.zeros((0, CLASSES)), np.zeros((0, CLASSES))
    for step in range(warmup + 2):
        zs, zt, y = batch(50 + step)
        reading = step >= warmup
        mem_s = seen_s[-size:] if reading else seen_s[:0]
        mem_t = seen_t[-size:] if reading else seen_t[:0]
        out = loss(zs, zt, y)
        expected = reference_terms(ref, zs, zt, y, mem_s, mem_t)
        for key, value in expected.items():
            assert float(out[key]) == pytest.approx(value, rel=1e-10, abs=1e-12), (step, key)
        assert float(out["memory_rows"]) == len(mem_s) == (min(4 * step, size) if reading else 0)
        seen_s, seen_t = np.concatenate([seen_s, np64(zs)]), np.concatenate([seen_t, np64(zt)])


def test_memory_warm_up_counts_training_calls_only_and_restarts_on_reset() -> None:
    loss = CSKDLoss(memory_size=8, memory_warmup_steps=2)
    zs, zt, y = batch(60)
    loss.eval()
    assert float(loss(zs, zt, y)["memory_rows"]) == 0.0  # eval calls do not count
    loss.train()
    assert [float(loss(*batch(61 + k))["memory_rows"]) for k in range(3)] == [0.0, 0.0, 8.0]
    loss.eval()
    assert float(loss(zs, zt, y)["memory_rows"]) == 8.0  # read in eval once read in training
    loss.train()
    loss.reset_memory()
    assert [float(loss(*batch(70 + k))["memory_rows"]) for k in range(3)] == [0.0, 0.0, 8.0]
    plain_first_call = CSKDLoss()(*batch(80))["loss"]
    warm = CSKDLoss(memory_size=8, memory_warmup_steps=1)(*batch(80))["loss"]
    assert torch.equal(warm, plain_first_call)  # warm-up: the plain method, bit for bit
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="memory_warmup_steps"):
            CSKDLoss(memory_size=8, memory_warmup_steps=bad)


GOLDEN_LOSS_STEP_4 = 16.237262176581734
"""``reference_terms`` on the fourth batch of ``test_golden_value_after_the_memory_fills``."""


def test_golden_value_after_the_memory_fills() -> None:
    """A pinned number: the fourth step's loss (memory of 7 rows), from the reference above."""
    loss = CSKDLoss(memory_size=7)
    for step in range(4):
        out = loss(*batch(10 + step))
    assert float(out["loss"]) == pytest.approx(GOLDEN_LOSS_STEP_4, rel=1e-10)


def test_memory_changes_the_loss_and_the_cswt_range(ref) -> None:
    """With a full memory the batch-axis terms differ from the batch-only ones (sanity)."""
    loss, plain = CSKDLoss(memory_size=8), CSKDLoss()
    for step in range(3):
        zs, zt, y = batch(20 + step)
        with_memory, without = loss(zs, zt, y), plain(zs, zt, y)
    assert not math.isclose(float(with_memory["cs"]), float(without["cs"]), rel_tol=1e-6)
    assert float(with_memory["ce"]) == float(without["ce"])  # CE stays on the current batch


# ------------------------------------------------------------------------- gradients
def torch_cskd(zs: torch.Tensor, zt: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
    """``2 mean(T)^2 (1 - mean_j cos(P_s[:, j], P_t[:, j]))``, written out (not the library)."""
    t = temps.reshape(-1, 1)
    ps, pt = torch.softmax(zs / t, dim=1), torch.softmax(zt / t, dim=1)
    cos = (ps * pt).sum(0) / (ps.norm(dim=0) * pt.norm(dim=0) + 1e-8)
    return 2.0 * temps.mean() ** 2 * (1.0 - cos.mean())


@pytest.mark.parametrize("rescale", [True, False])
def test_only_the_current_rows_carry_gradient(ref, rescale: bool) -> None:
    loss = CSKDLoss(memory_size=8, memory_rescale=rescale)
    old_s, old_t, old_y = batch(30, rows=6)
    old_s.requires_grad_()
    loss(old_s, old_t, old_y)  # fills the memory; no backward
    assert not loss.memory.student.requires_grad
    assert loss.memory.student.data_ptr() != old_s.data_ptr()  # a copy, not a view

    zs, zt, y = batch(31, rows=4)
    zs.requires_grad_()
    out = loss(zs, zt, y)
    out["loss"].backward()
    assert old_s.grad is None
    # The rescale changes the gradient only, never the value.
    value = {k: float(v.detach()) for k, v in out.items()}
    assert value["loss"] == pytest.approx(value["ce"] + value["cs"] + value["cs_cswt"], rel=1e-12)

    # The same gradient by hand: memory rows and CSWT temperatures as constants; with the
    # rescale the distillation part is scaled by (B + n) / B = (4 + 6) / 4.
    mem_s, mem_t = np64(old_s), np64(old_t)
    ext = np.concatenate([np64(zs), mem_s]), np.concatenate([np64(zt), mem_t])
    temps = torch.tensor(ref.cswt(*ext))
    leaf = zs.detach().clone().requires_grad_()
    ext_s = torch.cat([leaf, torch.from_numpy(mem_s)])
    ext_t = torch.cat([zt, torch.from_numpy(mem_t)])
    kd = torch_cskd(ext_s, ext_t, torch.full((10,), 4.0, dtype=F64)) + torch_cskd(
        ext_s, ext_t, temps
    )
    scale = 10 / 4 if rescale else 1.0
    (torch.nn.functional.cross_entropy(leaf, y) + scale * kd).backward()
    torch.testing.assert_close(zs.grad, leaf.grad, rtol=1e-9, atol=1e-12)


def test_rescale_keeps_the_distillation_pull_of_the_current_rows() -> None:
    """With the rescale, a full memory leaves the current rows' gradient norm about as large
    as without a memory; without it the norm shrinks roughly by B / (B + n)."""
    norms = {}
    for name, kwargs in {
        "none": {},
        "rescaled": {"memory_size": 240},
        "unscaled": {"memory_size": 240, "memory_rescale": False},
    }.items():
        loss = CSKDLoss(ce_weight=0.0, **kwargs)
        for step in range(16):  # 15 batches fill the memory
            zs, zt, y = batch(100 + step, rows=16)
            zs.requires_grad_()
            out = loss(zs, zt, y)
        out["loss"].backward()
        norms[name] = float(zs.grad.norm())
    assert 0.5 < norms["rescaled"] / norms["none"] < 2.0
    assert norms["unscaled"] / norms["none"] < 0.25


# ------------------------------------------------------------------------- FIFO behaviour
def numbered(step: int, rows: int = 4, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that say where they come from: student ``100 step + k``, teacher its negative."""
    zs = (100.0 * step + torch.arange(rows * classes, dtype=torch.float32)).reshape(rows, classes)
    return zs / 1000, -zs / 1000


def test_fifo_keeps_the_newest_rows_oldest_first() -> None:
    loss = CSKDLoss(memory_size=6)
    steps = [numbered(k) for k in range(3)]
    y = torch.zeros(4, dtype=torch.long)
    used = [float(loss(zs, zt, y)["memory_rows"]) for zs, zt in steps]
    assert used == [0.0, 4.0, 6.0]
    (_, _), (b_s, b_t), (c_s, c_t) = steps
    assert torch.equal(loss.memory.student, torch.cat([b_s[2:], c_s]))
    assert torch.equal(loss.memory.teacher, torch.cat([b_t[2:], c_t]))

    # A batch larger than the memory leaves its last rows.
    small = CSKDLoss(memory_size=3)
    zs, zt = numbered(7, rows=5)
    small(zs, zt, torch.zeros(5, dtype=torch.long))
    assert torch.equal(small.memory.student, zs[2:])


def test_memory_lives_across_epochs_is_read_only_in_eval_and_can_be_reset() -> None:
    loss = CSKDLoss(memory_size=6)
    y = torch.zeros(4, dtype=torch.long)
    loss(*numbered(0), y)
    loss.set_progress(epoch=1, global_step=10, max_epochs=3)  # a new epoch keeps it
    assert len(loss.memory) == 4
    loss.eval()
    assert float(loss(*numbered(1), y)["memory_rows"]) == 4.0
    assert len(loss.memory) == 4  # read, not written, in eval mode
    loss.train()
    loss(*numbered(2), y)
    assert len(loss.memory) == 6
    loss.reset_memory()
    assert len(loss.memory) == 0 and loss.memory.student is None
    assert float(loss(*numbered(3), y)["memory_rows"]) == 0.0


def test_other_class_count_empties_the_memory() -> None:
    loss = CSKDLoss(memory_size=6)
    loss(*numbered(0, classes=3), torch.zeros(4, dtype=torch.long))
    out = loss(*numbered(1, classes=4), torch.zeros(4, dtype=torch.long))
    assert float(out["memory_rows"]) == 0.0
    assert loss.memory.student.shape == (4, 4)


def test_low_precision_logits_are_stored_in_float32() -> None:
    loss = CSKDLoss(memory_size=8)
    for step in range(2):
        zs, zt, y = batch(40 + step, dtype=torch.bfloat16)
        out = loss(zs, zt, y)
    assert loss.memory.student.dtype == torch.float32
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_memory_is_not_in_the_state_dict() -> None:
    """Checkpoints of runs with and without a memory are interchangeable."""
    loss = CSKDLoss(memory_size=4)
    loss(*batch(0))
    assert loss.state_dict().keys() == CSKDLoss().state_dict().keys()
    assert list(loss.buffers()) == []
    CSKDLoss(memory_size=4).load_state_dict(CSKDLoss().state_dict(), strict=True)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "many"])
def test_bad_memory_size_is_rejected(bad) -> None:
    with pytest.raises((ValueError, TypeError), match="memory_size|invalid literal"):
        CSKDLoss(memory_size=bad)
    with pytest.raises(ValueError, match="positive size"):
        LogitMemory(0)


# ------------------------------------------------------------------------- under DDP
WORLD, STEPS, GLOBAL_BATCH, FEATURES, MEMORY = 2, 3, 8, 6, 10


def _ddp_problem():
    gen = torch.Generator().manual_seed(5)
    xs = torch.randn(STEPS, GLOBAL_BATCH, FEATURES, generator=gen, dtype=F64)
    zts = 3 * torch.randn(STEPS, GLOBAL_BATCH, CLASSES, generator=gen, dtype=F64)
    ys = torch.randint(0, CLASSES, (STEPS, GLOBAL_BATCH), generator=gen)
    init = torch.nn.Linear(FEATURES, CLASSES).to(F64).state_dict()
    return xs, zts, ys, init


def _run_steps(model, loss, rows: slice) -> list[dict[str, torch.Tensor]]:
    """Forward/backward (no optimiser step: the same weights each step) on each step's rows."""
    xs, zts, ys, _ = _ddp_problem()
    results = []
    for step in range(STEPS):
        model.zero_grad()
        out = loss(model(xs[step, rows]), zts[step, rows], ys[step, rows])
        out["loss"].backward()
        params = model.module if hasattr(model, "module") else model
        result = {k: v.detach().clone() for k, v in out.items()}
        result["grad_weight"] = params.weight.grad.clone()
        result["memory_student"] = loss.memory.student.clone()
        results.append(result)
    return results


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.Linear(FEATURES, CLASSES).to(F64)
        model.load_state_dict(_ddp_problem()[3])
        half = GLOBAL_BATCH // WORLD
        rows = slice(rank * half, (rank + 1) * half)
        results = _run_steps(DDP(model), CSKDLoss(memory_size=MEMORY), rows)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_memory_under_ddp_holds_gathered_logits_and_matches_one_process(tmp_path) -> None:
    """2 gloo processes x 4 samples == 1 process x 8, step after step, memory included."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _ddp_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True, start_method=method
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    model = torch.nn.Linear(FEATURES, CLASSES).to(F64)
    model.load_state_dict(_ddp_problem()[3])
    single = _run_steps(model, CSKDLoss(memory_size=MEMORY), slice(0, GLOBAL_BATCH))
    for step in range(STEPS):
        assert float(single[step]["memory_rows"]) == min(step * GLOBAL_BATCH, MEMORY)
        for rank in range(WORLD):
            got = ranks[rank][step]
            # The memory is the gathered batch: identical on every rank and to one process.
            assert torch.equal(got["memory_student"], ranks[0][step]["memory_student"])
            torch.testing.assert_close(got["memory_student"], single[step]["memory_student"])
            for key in ("cs", "cs_cswt", "cswt_t_min", "cswt_t_max", "memory_rows"):
                torch.testing.assert_close(got[key], single[step][key], rtol=1e-10, atol=1e-12)
            # DDP averages the gradients: every rank holds the one-process gradient.
            torch.testing.assert_close(
                got["grad_weight"], single[step]["grad_weight"], rtol=1e-9, atol=1e-12
            )


# ------------------------------------------------------------------------- the real command
def test_cli_trains_with_the_memory_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(
        [
            "cskd-train",
            *FAST,
            "distill=cskd_cswt_memory",
            "distill.loss.memory_size=100",
            f"hydra.run.dir={run}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = read_summary(run)
    assert summary["method"] == "cskd_cswt_memory"
    assert summary["student"]["test_acc"] is not None
    with open(run / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/memory_rows")]
    # digits: 64 per batch, 8 batches per epoch; the memory fills after 2 steps and stays full
    # across epochs: the epoch means are (0 + 64 + 6 * 100) / 8 = 83, then 100.
    assert [float(r["train/memory_rows"]) for r in rows] == pytest.approx([83.0, 100.0, 100.0])
