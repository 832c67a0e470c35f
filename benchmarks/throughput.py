"""Where a distillation step's time goes: measure it in ONE run, print a table.

"A distillation step costs one teacher forward plus one student training step; nothing else
should cost anything." For two workloads

* ``cifar``: CIFAR-shaped synthetic data (``uint8`` ``(N, 3, 32, 32)``, 100 classes),
  ``resnet32x4 -> resnet8x4``;
* ``fmnist``: real Fashion-MNIST (``--fmnist-dir``), the ``fmnist_teacher -> fmnist_student``
  pair of ``pair=fashion_mnist``,

it measures, alternating the sides of every ratio trial by trial (ABBA order) and taking the
median of the per-trial ratios (the machine may be shared and noisy):

(a) ``DistillationModule.compute_loss`` + ``check_finite`` + backward + SGD step (CSKD +
    CSWT, the default method) / (a bare teacher forward + a bare student CE training step), on
    the same pre-made batches; target <= 1.05. ``(a')``: the same against the bare step in
    ``compute_loss``'s order (student forward first, then the teacher's), which isolates what
    the module adds from what the order of the two forwards costs.
(b) a Lightning epoch (``Trainer.fit``, timed from ``on_train_epoch_start`` to
    ``on_train_epoch_end``: everything the module's ``training_step`` does, logging and metrics
    included) / the same epoch (same loader, same batches) in a bare loop of ``compute_loss`` +
    backward + step; target <= 1.05. ``(b')``: the same with :class:`EpochLoggedModule`, a
    proposal that logs the loss terms once per epoch instead of every step.
(c) images/s of loading + augmenting alone: the device pipeline (``cskd_lightning.data.device``)
    / torchvision's ``DataLoader`` with PIL transforms (``RandomCrop`` + flip + ``ToTensor`` +
    ``Normalize``) and 2 workers; target >= 5. ``(c2)``: the same in two-view mode (strong view:
    torchvision's ``RandAugment(2, 9)`` + Cutout vs the batched ops).
(d) the loss alone (forward + backward on the logits) as a share of the distillation step of
    (a); target < 1%.

Timing: on a CPU, (a), (b) and (d) count this process's CPU time (``--clock cpu``, default):
on a shared machine that measures the work done rather than the waits for a core; intra-op
threads default to 1 (two threads that must meet at every op stall badly when other jobs hold
the cores). (c) is always wall time (its baseline works in worker processes). On a GPU
everything is wall time, synchronised.

Run ``python benchmarks/throughput.py --help``; the defaults finish in a few minutes on 2 CPU
cores. On a GPU: ``--device cuda`` (more steps by default; add ``--precision bf16-mixed``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from cskd_lightning import CSKDLoss, DistillationModule
from cskd_lightning.data import CIFAR100DataModule
from cskd_lightning.data.batch_augment import BatchAugment
from cskd_lightning.data.device import DeviceBatchLoader, ShardedPermutation
from cskd_lightning.data.fashion_mnist import MEAN as FMNIST_MEAN
from cskd_lightning.data.fashion_mnist import STD as FMNIST_STD
from cskd_lightning.data.fashion_mnist import find_fashion_mnist_files, read_idx
from cskd_lightning.data.transforms import Cutout, TwoViewTransform
from cskd_lightning.models import create_model
from cskd_lightning.module_options import logits_of

CIFAR100_MEAN, CIFAR100_STD = CIFAR100DataModule.mean, CIFAR100DataModule.std


# ------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """One teacher/student pair and its data (raw ``uint8`` ``(N, C, H, W)`` on the CPU)."""

    name: str
    teacher: str
    student: str
    num_classes: int
    images: Tensor
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int
    batch_size: int
    steps: int  # timed steps per trial for (a) and (d)
    epoch_batches: int  # batches of the epoch of (b)
    loader_images: int  # images per pass of (c)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])


def cifar_workload(args: argparse.Namespace, cuda: bool) -> Workload:
    g = torch.Generator().manual_seed(0)
    n = max(args.loader_images, args.batch_size * 8)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 100, (n,), generator=g)
    return Workload(
        name="cifar (synthetic)",
        teacher="resnet32x4",
        student="resnet8x4",
        num_classes=100,
        images=images,
        labels=labels,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        padding=4,
        batch_size=args.batch_size,
        steps=args.cifar_steps or (50 if cuda else 1),
        epoch_batches=args.cifar_epoch_batches or (100 if cuda else 1),
        loader_images=args.loader_images,
    )


def fmnist_workload(args: argparse.Namespace, cuda: bool) -> Workload:
    files = find_fashion_mnist_files(args.fmnist_dir)
    images = torch.from_numpy(read_idx(files["train_images"], "images")).unsqueeze(1)
    labels = torch.from_numpy(read_idx(files["train_labels"], "labels").astype(np.int64))
    return Workload(
        name="fmnist (real)",
        teacher="fmnist_teacher",
        student="fmnist_student",
        num_classes=10,
        images=images,
        labels=labels,
        mean=FMNIST_MEAN,
        std=FMNIST_STD,
        padding=2,
        batch_size=args.fmnist_batch_size,
        steps=args.fmnist_steps or (200 if cuda else 20),
        epoch_batches=args.fmnist_epoch_batches
        or (len(labels) // args.fmnist_batch_size if cuda else 30),
        loader_images=args.loader_images,
    )


# ------------------------------------------------------------------------------- helpers
#: The clock of (a), (b) and (d): ``time.process_time`` (this process's CPU time) with
#: ``--clock cpu``, the default on a CPU, where the machine may be shared: it counts the work
#: done, not the time spent waiting for a core; ``time.perf_counter`` (wall) otherwise. (c)
#: always uses wall time: its baseline works in DataLoader worker processes.
CLOCK: Callable[[], float] = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def per_step(fn: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (device-synchronised)."""
    sync(device)
    start = CLOCK()
    for _ in range(steps):
        fn()
    sync(device)
    return (CLOCK() - start) / steps


def alternate(*fns: Callable[[], float], trials: int) -> list[list[float]]:
    """Run every ``fn`` ``trials`` times, in order then reversed (ABBA...); one list per fn."""
    results: list[list[float]] = [[] for _ in fns]
    for t in range(trials):
        order = list(range(len(fns)))
        for i in order if t % 2 == 0 else order[::-1]:
            results[i].append(fns[i]())
    return results


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(num, den, strict=True))


@dataclass
class Row:
    workload: str
    measure: str
    detail: str
    ratio: float
    target: str
    ok: bool

    def cells(self) -> list[str]:
        value = f"{self.ratio * 100:.2f}%" if self.target.endswith("%") else f"{self.ratio:.3f}"
        return [
            self.workload,
            self.measure,
            self.detail,
            value,
            self.target,
            "PASS" if self.ok else "MISS",
        ]


def table(rows: list[Row]) -> str:
    head = ["workload", "measure", "images/s (num vs den) or time", "ratio", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- models
class EpochLoggedModule(DistillationModule):
    """A proposal, measured in (b'): the same training step, but the loss terms are summed on
    the device and logged ONCE per epoch (and the accuracy logged at the epoch's end), instead
    of ``len(terms) + 1`` ``self.log`` calls per step; each costs ~0.5 ms of Python on a CPU
    core in Lightning's result collection, whatever the device."""

    def on_train_epoch_start(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        if not hasattr(self, "train_metrics"):
            self.train_metrics = self.val_metrics.clone(prefix="train/")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.loss.set_progress(self.current_epoch, self.global_step, self.trainer.max_epochs)
        logits, terms = self.compute_loss(batch)
        self.check_finite(terms)
        y = batch[1]
        self.train_metrics.update(logits.detach(), y)
        n = int(y.shape[0])
        for name, value in terms.items():
            total = value.detach() * n
            self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._count += n
        return terms["loss"]

    def on_train_epoch_end(self) -> None:
        for name, total in self._sums.items():
            self.log(f"train/{name}", total / self._count, sync_dist=True, prog_bar=False)
        self.log_dict(self.train_metrics)


def build_module(
    w: Workload,
    args: argparse.Namespace,
    device: torch.device,
    cls: type[DistillationModule] = DistillationModule,
) -> DistillationModule:
    torch.manual_seed(0)
    kw = {"num_classes": w.num_classes, "in_channels": w.in_channels}
    teacher = create_model(w.teacher, **kw)
    student = create_model(w.student, **kw)
    module = cls(
        student,
        teacher,
        CSKDLoss(),
        channels_last=args.channels_last,
        compile_models=args.compile,
        check_inputs=not args.no_check_inputs,
    )
    return module.to(device)


def make_batches(w: Workload, device: torch.device, count: int = 8) -> list[tuple[Tensor, Tensor]]:
    """``count`` normalised, augmented training batches, pre-made on the device."""
    loader = device_loader(w, w.images, w.labels, device, two_view=False)
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == count:
            break
    return out


def device_loader(
    w: Workload, images: Tensor, labels: Tensor, device: torch.device, two_view: bool
) -> DeviceBatchLoader:
    n = int(images.shape[0])
    augment = BatchAugment(
        torch.tensor(w.mean), torch.tensor(w.std), 255.0, w.padding, True, two_view=two_view
    )
    return DeviceBatchLoader(
        images.to(device),
        labels.to(device),
        w.batch_size,
        ShardedPermutation(n, shuffle=True, seed=0),
        augment,
        drop_last=True,
    )


# ------------------------------------------------------------------------------- (a) and (d)
def measure_step(w: Workload, args: argparse.Namespace, device: torch.device) -> list[Row]:
    module = build_module(w, args, device).train()
    batches = make_batches(w, device)
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.01, momentum=0.9)
    student_fn, teacher_fn = module.student, module.teacher
    it: Iterator[int] = iter(range(10**9))

    def batch() -> tuple[Tensor, Tensor]:
        x, y = batches[next(it) % len(batches)]
        return module._format_input(x), y

    def bare_step() -> None:
        """The teacher forward, then a plain CE training step of the student."""
        x, y = batch()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            with torch.no_grad():
                teacher_fn(x)
            loss = F.cross_entropy(logits_of(student_fn(x)).float(), y)
        loss.backward()
        optimizer.step()

    def bare_step_student_first() -> None:
        """The same in ``compute_loss``'s order: student forward, teacher forward, backward."""
        x, y = batch()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            loss = F.cross_entropy(logits_of(student_fn(x)).float(), y)
            with torch.no_grad():
                teacher_fn(x)
        loss.backward()
        optimizer.step()

    def distill_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            _, terms = module.compute_loss(batch())
            module.check_finite(terms)
        terms["loss"].backward()
        optimizer.step()

    with autocast(device, args.precision):
        x, y = batches[0]
        zs = logits_of(module.forward_student(x)).detach()
        zt = module.forward_teacher(x)
    zs.requires_grad_(True)

    def loss_alone() -> None:
        zs.grad = None
        with autocast(device, args.precision):
            terms = module.loss(zs, zt, y)
        terms["loss"].backward()

    fns = (bare_step, bare_step_student_first, distill_step, loss_alone)
    for _ in range(args.warmup):
        for fn in fns:
            fn()
    loss_steps = max(w.steps * 20, 100)
    bare, bare_sf, distill, loss = alternate(
        *(lambda fn=fn: per_step(fn, w.steps, device) for fn in fns[:3]),
        lambda: per_step(loss_alone, loss_steps, device),
        trials=args.trials,
    )
    bs = w.batch_size
    share = median_ratio(loss, distill)
    rows = []
    for tag, base in (
        ("(a) distill step / (teacher fwd + student step)", bare),
        ("(a') the same, baseline in compute_loss's order (student fwd first)", bare_sf),
    ):
        ratio = median_ratio(distill, base)
        rows.append(
            Row(
                w.name,
                tag,
                f"{bs / statistics.median(distill):,.0f} vs {bs / statistics.median(base):,.0f}",
                ratio,
                "<= 1.05",
                ratio <= 1.05,
            )
        )
    return [
        *rows,
        Row(
            w.name,
            "(d) loss fwd+bwd / distill step",
            f"{statistics.median(loss) * 1e3:.3f} ms of {statistics.median(distill) * 1e3:.1f} ms",
            share,
            "< 1%",
            share < 0.01,
        ),
    ]


# ------------------------------------------------------------------------------- (b)
class EpochTimer(Callback):
    """Wall time from ``on_train_epoch_start`` to ``on_train_epoch_end`` (synchronised)."""

    def __init__(self) -> None:
        self.seconds = float("nan")
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self._start = CLOCK()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.seconds = CLOCK() - self._start


def measure_epoch(w: Workload, args: argparse.Namespace, device: torch.device) -> list[Row]:
    module = build_module(w, args, device)
    proposal = build_module(w, args, device, EpochLoggedModule)
    loader = device_loader(w, w.images, w.labels, device, two_view=False)
    batches = min(w.epoch_batches, len(loader))
    accelerator = "gpu" if device.type == "cuda" else "cpu"

    def lightning_epoch(module: DistillationModule = module) -> float:
        timer = EpochTimer()
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=1,
            limit_train_batches=batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            precision=args.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, train_dataloaders=loader)
        return timer.seconds

    def bare_epoch() -> float:
        module.train()
        optimizer = module.configure_optimizers()
        sync(device)
        start = CLOCK()
        loader.set_epoch(0)
        for i, batch in enumerate(loader):
            if i == batches:
                break
            module.loss.set_progress(0, i, 1)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, args.precision):
                _, terms = module.compute_loss(batch)
                module.check_finite(terms)
            terms["loss"].backward()
            optimizer.step()
        sync(device)
        return CLOCK() - start

    lightning_epoch()  # warm-up (and Lightning's one-off imports)
    lightning_epoch(proposal)
    bare_epoch()
    light, light_proposal, bare = alternate(
        lightning_epoch, lambda: lightning_epoch(proposal), bare_epoch, trials=args.trials
    )
    n = batches * w.batch_size
    rows = []
    for tag, times in (("(b)", light), ("(b') per-epoch term logging:", light_proposal)):
        ratio = median_ratio(times, bare)
        rows.append(
            Row(
                w.name,
                f"{tag} Lightning epoch / bare loop ({batches} batches)",
                f"{n / statistics.median(times):,.0f} vs {n / statistics.median(bare):,.0f}",
                ratio,
                "<= 1.05",
                ratio <= 1.05,
            )
        )
    return rows


# ------------------------------------------------------------------------------- (c)
class PILImages(torch.utils.data.Dataset):
    """``uint8`` ``(N, C, H, W)`` served as PIL images through ``transform`` (as torchvision's
    CIFAR / FashionMNIST datasets do)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Any], Any]) -> None:
        arr = images.permute(0, 2, 3, 1).numpy()
        self.images = arr[..., 0] if arr.shape[-1] == 1 else arr
        self.labels = labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_loader(
    w: Workload, images: Tensor, labels: Tensor, two_view: bool, workers: int
) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    size = int(images.shape[-1])

    def pipeline(strong: bool) -> Callable[[Any], Any]:
        ops: list[Any] = [T.RandomCrop(size, padding=w.padding), T.RandomHorizontalFlip()]
        if strong:
            ops.append(T.RandAugment(num_ops=2, magnitude=9))
        ops += [T.ToTensor(), T.Normalize(w.mean, w.std)]
        if strong:
            ops.append(Cutout())
        return T.Compose(ops)

    transform = TwoViewTransform(pipeline(False), pipeline(True)) if two_view else pipeline(False)
    return torch.utils.data.DataLoader(
        PILImages(images, labels, transform),
        batch_size=w.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def measure_loading(w: Workload, args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows = []
    n = min(w.loader_images, int(w.images.shape[0]))
    images, labels = w.images[:n], w.labels[:n]
    for two_view in (False, True):
        dev = device_loader(w, images, labels, device, two_view)
        tv = torchvision_loader(w, images, labels, two_view, args.workers)

        def run(loader: Any) -> float:
            sync(device)
            start = time.perf_counter()
            count = 0
            for x, y in loader:
                if device.type == "cuda" and not y.is_cuda:
                    x = (
                        tuple(v.to(device, non_blocking=True) for v in x)
                        if isinstance(x, (tuple, list))
                        else x.to(device, non_blocking=True)
                    )
                count += int(y.shape[0])
            sync(device)
            return count / (time.perf_counter() - start)

        run(dev)  # warm-up; starts the persistent workers
        next(iter(tv))
        ours, theirs = alternate(
            lambda dev=dev: run(dev), lambda tv=tv: run(tv), trials=args.trials
        )
        speedup = median_ratio(ours, theirs)
        label = "(c2) two-view" if two_view else "(c) single view"
        rows.append(
            Row(
                w.name,
                f"{label}: device pipeline / DataLoader+PIL ({args.workers} workers)",
                f"{statistics.median(ours):,.0f} vs {statistics.median(theirs):,.0f}",
                speedup,
                ">= 5",
                speedup >= 5.0,
            )
        )
        del tv
    return rows


# ------------------------------------------------------------------------------- main
def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on cpu, where 2 threads stall on a shared "
        "2-core machine; unchanged on cuda)",
    )
    p.add_argument("--workloads", default="cifar,fmnist", help="comma list of cifar, fmnist")
    p.add_argument("--trials", type=int, default=5, help="alternating trials per ratio")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before (a)/(d)")
    p.add_argument("--batch-size", type=int, default=64, help="cifar batch size")
    p.add_argument("--fmnist-batch-size", type=int, default=128)
    p.add_argument("--cifar-steps", type=int, default=0, help="0: 1 on cpu, 50 on cuda")
    p.add_argument("--fmnist-steps", type=int, default=0, help="0: 20 on cpu, 200 on cuda")
    p.add_argument("--cifar-epoch-batches", type=int, default=0, help="0: 1 on cpu, 100 on cuda")
    p.add_argument(
        "--fmnist-epoch-batches", type=int, default=0, help="0: 30 on cpu, a full epoch on cuda"
    )
    p.add_argument("--loader-images", type=int, default=5120, help="images per pass in (c)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--no-check-inputs", action="store_true", help="check_inputs=False")
    p.add_argument(
        "--fmnist-dir",
        default=os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"),
    )
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="timer of (a), (b), (d): process CPU time or wall time (default: cpu on a CPU "
        "device, wall on cuda; (c) is always wall time)",
    )
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    threads = args.threads if args.threads is not None else (0 if cuda else 1)
    if threads > 0:
        torch.set_num_threads(threads)
    global CLOCK
    clock = args.clock or ("wall" if cuda else "cpu")
    if clock == "cpu" and cuda:
        raise SystemExit("--clock cpu measures nothing of the GPU's work: use --clock wall")
    CLOCK = time.process_time if clock == "cpu" else time.perf_counter
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    makers = {"cifar": cifar_workload, "fmnist": fmnist_workload}
    rows: list[Row] = []
    started = time.time()
    for name in names:
        w = makers[name](args, cuda)
        print(f"# {w.name}: {w.teacher} -> {w.student}, batch {w.batch_size}", flush=True)
        for part in (measure_step, measure_epoch, measure_loading):
            t0 = time.time()
            new = part(w, args, device)
            rows += new
            print(f"  {part.__name__}: {time.time() - t0:.0f} s", flush=True)
            for r in new:
                print("   ", " | ".join(r.cells()), flush=True)
    header = (
        f"device {device} ({torch.cuda.get_device_name(device) if cuda else cpu_name()}"
        f", {os.cpu_count()} cores), torch {torch.__version__}, lightning {L.__version__}, "
        f"threads {torch.get_num_threads()}, clock {clock}, precision {args.precision}, "
        f"channels_last {args.channels_last}, compile {args.compile}, "
        f"trials {args.trials}, {dt.datetime.now().isoformat(timespec='minutes')}, "
        f"took {time.time() - started:.0f} s"
    )
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(f"python {' '.join(sys.argv)}\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
