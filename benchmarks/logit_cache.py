"""What the teacher-logit cache saves: measure it in ONE run, print a markdown report.

Two workloads, both on the device pipeline (the cache needs it):

* ``fmnist``: real Fashion-MNIST (``--fmnist-dir``), ``fmnist_teacher -> fmnist_student`` (the
  pair of ``pair=fashion_mnist``); the teacher is first trained for ``--fmnist-teacher-batches``
  steps so that its logits have a realistic scale;
* ``cifar``: CIFAR-shaped synthetic data (``uint8`` ``(N, 3, 32, 32)``, 100 classes, a subset of
  ``--cifar-images``), ``resnet32x4 -> resnet8x4`` (random teacher: only the cost matters).

For each it measures, with :class:`~cskd_lightning.logit_cache.TeacherLogitCache` exactly as
``cskd-train teacher.logit_cache=true`` attaches it:

(a) a warm-cache distilled epoch (CSKD + CSWT, every batch read from the cache) / a ``ce``
    epoch of the same student (no teacher at all); target <= 1.10. The two alternate trial by
    trial (ABBA) and the median of the per-trial ratios is reported; a live-teacher epoch /
    ``ce`` is shown beside it for scale.
(b) a 4-method sweep (``kd, cskd, cskd_cswt, dkd``, one epoch each, fresh student each): total
    wall time with the cache (the first method stores, the other three read) / without.
(c) ``fmnist`` only: the effect of a ``float16`` cache on the loss: for every batch of the
    epoch, each method's loss with the float16-stored logits against the float32 ones (same
    student), and the final training loss after one epoch trained from each cache.

Timing: process CPU time by default (``--clock cpu``; the machine may be shared, and CPU time
counts the work done rather than the waits for a core), single-threaded (``--threads 1``);
``--clock wall`` for wall time. (b) is always wall time. Run ``python benchmarks/logit_cache.py
--help``; the defaults take about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from synthetic import EpochTimer, SyntheticCIFAR, plain_trainer

from cskd_lightning import CELoss, CSKDLoss, DistillationModule, DKDLoss, KDLoss
from cskd_lightning.app.jobs import quiet_logs
from cskd_lightning.data import DeviceDataModule, FashionMNISTDataModule
from cskd_lightning.data.device import SampleBatch
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.logit_store import LogitFile
from cskd_lightning.models import create_model

METHODS: dict[str, Callable[[], torch.nn.Module]] = {
    "kd": KDLoss,
    "cskd": lambda: CSKDLoss(cswt=False),
    "cskd_cswt": CSKDLoss,
    "dkd": DKDLoss,
}


@dataclass
class Workload:
    name: str
    teacher: torch.nn.Module
    student_name: str
    in_channels: int
    num_classes: int
    datamodule: DeviceDataModule
    batches: int  # training batches per epoch

    def student(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model(
            self.student_name, num_classes=self.num_classes, in_channels=self.in_channels
        )


def run_epoch(
    w: Workload, loss: torch.nn.Module, cache_root: Path | None, dtype: str = "float32"
) -> tuple[float, float, DistillationModule, TeacherLogitCache | None]:
    """One training epoch of a fresh student; ``(wall s, cpu s, module, cache)``."""
    timer = EpochTimer()
    callbacks: list = [timer]
    cache = None
    if cache_root is not None:
        cache = TeacherLogitCache(cache_root, w.name, dtype)
        callbacks.append(cache)
    teacher = w.teacher if loss.requires_teacher else None
    module = DistillationModule(w.student(), teacher, loss)
    trainer = plain_trainer(callbacks, limit_train_batches=w.batches)
    trainer.fit(module, datamodule=w.datamodule)
    return timer.wall[0], timer.cpu[0], module, cache


def fmnist_workload(args: argparse.Namespace) -> Workload:
    dm = DeviceDataModule(
        FashionMNISTDataModule(
            data_dir=args.fmnist_dir, batch_size=args.fmnist_batch_size, val_split=5000
        )
    )
    torch.manual_seed(0)
    teacher = create_model("fmnist_teacher", num_classes=10, in_channels=1)
    if args.fmnist_teacher_batches > 0:
        module = DistillationModule(teacher, None, CELoss())
        trainer = plain_trainer([], limit_train_batches=args.fmnist_teacher_batches)
        trainer.fit(module, datamodule=dm)
    teacher.eval()
    return Workload("fmnist", teacher, "fmnist_student", 1, 10, dm, args.fmnist_batches)


def cifar_workload(args: argparse.Namespace) -> Workload:
    dm = DeviceDataModule(SyntheticCIFAR(args.cifar_images, batch_size=args.cifar_batch_size))
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100).eval()
    batches = args.cifar_images // args.cifar_batch_size
    return Workload("cifar", teacher, "resnet8x4", 3, 100, dm, batches)


def measure(w: Workload, args: argparse.Namespace, root: Path) -> dict:
    clock = 1 if args.clock == "cpu" else 0
    out: dict = {"name": w.name, "batches": w.batches, "batch": w.datamodule.batch_size}
    # (a) warm the cache (kd stores epoch 0; CSKD + CSWT reads the same single-view logits)
    warm_root = root / f"{w.name}-warm"
    live = run_epoch(w, KDLoss(), warm_root)
    out["store_epoch"] = live[clock]
    ratios, live_ratios, ce_t, warm_t, live_t = [], [], [], [], []
    for trial in range(args.trials):
        order = ("ce", "warm", "live") if trial % 2 == 0 else ("live", "warm", "ce")
        t: dict[str, float] = {}
        for kind in order:
            if kind == "ce":
                t[kind] = run_epoch(w, CELoss(), None)[clock]
            elif kind == "warm":
                result = run_epoch(w, CSKDLoss(), warm_root)
                assert result[3].stats["computed"] == 0, result[3].stats
                t[kind] = result[clock]
            else:
                t[kind] = run_epoch(w, CSKDLoss(), None)[clock]
        ratios.append(t["warm"] / t["ce"])
        live_ratios.append(t["live"] / t["ce"])
        ce_t.append(t["ce"])
        warm_t.append(t["warm"])
        live_t.append(t["live"])
        print(f"  [{w.name}] trial {trial}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    out["a"] = statistics.median(ratios)
    out["a_trials"] = ratios
    out["a_live"] = statistics.median(live_ratios)
    out["ce_s"], out["warm_s"], out["live_s"] = map(statistics.median, (ce_t, warm_t, live_t))

    # (b) a 4-method sweep, with the cache and without (wall time, one epoch each)
    sweep: dict[str, float] = {}
    for kind in ("without", "with") if w.name == "fmnist" else ("with", "without"):
        sweep_root = root / f"{w.name}-sweep" if kind == "with" else None
        start = time.perf_counter()
        for method in args.methods:
            run_epoch(w, METHODS[method](), sweep_root)
        sweep[kind] = time.perf_counter() - start
        print(f"  [{w.name}] sweep {kind} cache: {sweep[kind]:.1f}s")
    out["b_with"], out["b_without"] = sweep["with"], sweep["without"]
    out["b"] = sweep["with"] / sweep["without"]
    return out


def float16_effect(w: Workload, root: Path) -> dict:
    """Loss with float16-stored teacher logits vs float32, on every batch of epoch 0."""
    f32 = run_epoch(w, CSKDLoss(), root / "f32", "float32")
    f16 = run_epoch(w, CSKDLoss(), root / "f16", "float16")
    final = {
        "f32": float(f32[2].trainer.callback_metrics["train/loss"]),
        "f16": float(f16[2].trainer.callback_metrics["train/loss"]),
    }
    n = w.datamodule.split_tensors("train")[0].shape[0]
    files = {
        dtype: LogitFile(run[3].directory / "train-e0000", n, 1, w.num_classes, dtype)
        for dtype, run in (("float32", f32), ("float16", f16))
    }
    student = w.student().eval()
    losses = {m: METHODS[m]() for m in METHODS}
    for loss in losses.values():
        loss.set_progress(30, 0, 240)  # DKD past its warm-up: the full loss
    rel: dict[str, list[float]] = {m: [] for m in losses}
    max_logit_err = 0.0
    loader = w.datamodule.train_dataloader()
    loader.set_epoch(0)
    with torch.no_grad():
        for b, batch in enumerate(loader):
            if b >= w.batches:
                break
            assert isinstance(batch, SampleBatch)
            zs = student(batch.x)
            zs = zs[0] if isinstance(zs, tuple) else zs
            exact = torch.from_numpy(np.array(files["float32"].values[batch.host_index, 0]))
            half = torch.from_numpy(np.array(files["float16"].values[batch.host_index, 0]))
            half = half.float()
            max_logit_err = max(max_logit_err, float((exact - half).abs().max()))
            for name, loss in losses.items():
                a = float(loss(zs, exact, batch.y)["loss"])
                c = float(loss(zs, half, batch.y)["loss"])
                rel[name].append(abs(c - a) / max(abs(a), 1e-12))
    return {
        "max_logit_err": max_logit_err,
        "rel": {m: (statistics.median(v), max(v)) for m, v in rel.items()},
        "final": final,
    }


def report(results: list[dict], f16: dict | None, args: argparse.Namespace, wall: float) -> str:
    lines = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, {args.threads} thread(s), torch {torch.__version__}, "
        f"clock: {args.clock}); whole run {wall / 60:.1f} min.",
        "",
        "| workload | batches x batch | (a) warm cache / ce epoch | live teacher / ce epoch | "
        "ce epoch | warm epoch | live epoch | (b) sweep with / without cache | "
        "sweep with | sweep without |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['batches']} x {r['batch']} | **{r['a']:.3f}** "
            f"({', '.join(f'{v:.3f}' for v in r['a_trials'])}) | {r['a_live']:.2f} | "
            f"{r['ce_s']:.2f} s | {r['warm_s']:.2f} s | {r['live_s']:.2f} s | "
            f"**{r['b']:.3f}** | {r['b_with']:.1f} s | {r['b_without']:.1f} s |"
        )
    if f16 is not None:
        lines += [
            "",
            f"float16 cache (fmnist): largest logit rounding error {f16['max_logit_err']:.2e}; "
            f"final training loss after one epoch {f16['final']['f32']:.6f} (float32 cache) vs "
            f"{f16['final']['f16']:.6f} (float16).",
            "",
            "| method | median relative loss change | largest |",
            "|---|---|---|",
        ]
        for m, (med, worst) in f16["rel"].items():
            lines.append(f"| {m} | {med:.2e} | {worst:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--fmnist-batches", type=int, default=100)
    p.add_argument("--fmnist-batch-size", type=int, default=128)
    p.add_argument("--fmnist-teacher-batches", type=int, default=200)
    p.add_argument("--cifar-images", type=int, default=512)
    p.add_argument("--cifar-batch-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--methods", default="kd,cskd,cskd_cswt,dkd")
    p.add_argument("--workloads", default="fmnist,cifar")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = p.parse_args(argv)
    args.methods = args.methods.split(",")
    torch.set_num_threads(args.threads)
    quiet_logs()
    started = time.perf_counter()
    results, f16 = [], None
    with tempfile.TemporaryDirectory(prefix="logit-cache-bench-") as tmp:
        root = Path(tmp)
        for name in args.workloads.split(","):
            print(f"workload {name} ...", flush=True)
            w = fmnist_workload(args) if name == "fmnist" else cifar_workload(args)
            results.append(measure(w, args, root))
            if name == "fmnist":
                f16 = float16_effect(w, root / "dtype")
    text = report(results, f16, args, time.perf_counter() - started)
    print()
    print("Command: python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]))
    print()
    print(text)


if __name__ == "__main__":
    main()
