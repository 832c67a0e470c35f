"""Batch size with 100 classes: KD vs CSKD + CSWT.

CSKD's per-class batch cosine and the CSWT min/max are taken over the batch axis, so the loss
depends on the batch size, and most where a batch holds fewer samples than there are classes.
This study measures that case on real images: the 100-class Fashion-MNIST pairs
(``data=fashion_mnist_pairs``: two Fashion-MNIST images side by side, label ``10 a + b``) with
``pair=fashion_mnist_pairs`` (``fmnist_pairs_teacher``, 74,708 parameters ->
``fmnist_pairs_student``, 6,908), at global batch sizes 16 to 256 (0.16 to 2.56 samples per
class), with

* ``kd``: Hinton KD (per sample, ``0.1 CE + 0.9 T^2 KL``, ``conf/distill/kd.yaml``), the
  control each method is paired with;
* ``cskd_cswt``: the method (the published objective, ``conf/distill/cskd_cswt.yaml``: CE with
  weight 1 plus two cosine terms);
* ``ce``: the labels alone, no teacher (``conf/distill/ce.yaml``): what distillation adds;
* ``kd_ce1``: KD with CE weight 1.0 (``1.0 CE + 0.9 T^2 KL``): KD with the CE weight
  CSKD + CSWT uses, so that the CE weight is not what separates the two.

The recorded study (docs/benchmarks/batch_size_100/results.jsonl, run at commit 0184698) also
holds two variants with a logit memory of ``256 - B`` rows below the batch,
``cskd_cswt_memory_warm`` (read after the LR warm-up) and ``cskd_cswt_memory_cold`` (read from
step 1). The memory has since been removed from the package (the last commit with it is
05927b3): ``--report-only`` still reports those records, nothing runs them.

Protocol, fixed before any run of this study (docs/benchmarks/batch_size_100.md):

* **the same number of optimiser steps at every batch size** (``--steps``), so a large batch
  does not get fewer steps; the training set (60,000 pairs) is cycled as needed;
* **the same learning-rate schedule at every batch size**: SGD (momentum 0.9, Nesterov,
  weight decay 5e-4, the pair's recipe) with LR ``--lr`` (0.05, no scaling with the batch),
  a linear warm-up from ``lr / warmup`` to ``lr`` over the first ``--warmup-steps`` steps,
  then a cosine decay to 0 at the last step (per step). Larger batches then differ only in
  seeing more samples with less gradient noise, which helps every method; KD measures that,
  and the difference to KD with the same seed is what the loss itself adds;
* one teacher, trained once on all 60,000 training pairs and cached (``--teacher-ckpt``);
* seeds: the seed sets the student's initialisation, the sample order and the crop draws, the
  same for every method, so differences to KD are paired by seed;
* runs go through Lightning's ``Trainer`` with the repo's ``DistillationModule`` and the device
  pipeline (``DeviceDataModule(FashionMNISTPairsDataModule(...))``, no validation); the test
  accuracy of the final weights is on the 10,000 test pairs (made of test images only).

``--jobs 2`` trains the teacher, then runs the student runs in two worker processes (one
thread each) and writes the report. Every finished run is appended to
``<work-dir>/results.jsonl`` (an interrupted study resumes where it stopped; ``--report-only``
redraws). Outputs: ``<work-dir>/table.md`` and the plot ``--plot``::

    nice -n 10 python benchmarks/batch_size_study_100.py --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from batch_size_study import mean_std, minus_control, quiet, summarise
from omegaconf import OmegaConf

from cskd_lightning.data import DeviceDataModule, FashionMNISTPairsDataModule
from cskd_lightning.losses import CELoss
from cskd_lightning.models import create_model
from cskd_lightning.module import DistillationModule

METHODS = ("kd", "cskd_cswt", "ce", "kd_ce1")
RECORDED_METHODS = ("cskd_cswt_memory_warm", "cskd_cswt_memory_cold")
"""In the recorded results only: the logit memory they used is no longer in the package."""
RECORDED_MEMORY_ROWS = 256
"""Batch + memory rows of the recorded memory runs: ``256 - B`` memory rows, none at 256."""
LABELS = {
    "kd": "KD (control)",
    "cskd_cswt": "CSKD + CSWT",
    "ce": "labels only (no teacher)",
    "kd_ce1": "KD with CE weight 1.0",
    "cskd_cswt_memory_warm": "CSKD + CSWT + memory after warm-up",
    "cskd_cswt_memory_cold": "CSKD + CSWT + memory from step 1",
}
DEFAULT_DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
NUM_CLASSES = 100


# ----------------------------------------------------------------------------------- training
def datamodule(args: argparse.Namespace, batch: int, seed: int) -> DeviceDataModule:
    """All 60,000 training pairs (no validation split), the 10,000 test pairs."""
    return DeviceDataModule(
        FashionMNISTPairsDataModule(
            data_dir=args.data_dir, batch_size=batch, eval_batch_size=1000, val_split=0, seed=seed
        )
    )


def warmup_cosine(steps: int, warmup: int):
    """LR factor of optimiser step ``s`` (0-based): ``(s + 1) / warmup`` for ``s < warmup``,
    then ``(1 + cos(pi (s - warmup) / (steps - warmup))) / 2``, 1 down to 0 at ``s = steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (
            1.0 + math.cos(math.pi * min(step - warmup, steps - warmup) / (steps - warmup))
        )

    return factor


class StepScheduledModule(DistillationModule):
    """``DistillationModule`` whose LR scheduler steps after every optimiser step."""

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        config["lr_scheduler"]["interval"] = "step"
        return config


def recipe(lr: float, steps: int, warmup: int) -> tuple[Any, Any]:
    """The pair's SGD with the study's per-step warm-up + cosine schedule."""

    def optimizer(params):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))

    return optimizer, scheduler


def trainer(max_steps: int = -1, max_epochs: int | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=max_epochs if max_epochs is not None else -1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def test_accuracy(module: DistillationModule, dm: L.LightningDataModule) -> float:
    results = trainer(max_epochs=1).test(module, datamodule=dm, verbose=False)
    return float(results[0]["test/acc"])


def make_loss(method: str) -> torch.nn.Module:
    """The loss of ``conf/distill/<method>.yaml``; ``kd_ce1`` is ``kd.yaml`` with
    ``ce_weight=1.0`` (``1.0 * CE + 0.9 * T^2 KL``, the CE weight CSKD + CSWT uses)."""
    name = "kd" if method == "kd_ce1" else method
    cfg = OmegaConf.load(str(files("cskd_lightning.conf") / "distill" / f"{name}.yaml"))
    if method == "kd_ce1":
        cfg.loss.ce_weight = 1.0
    return hydra.utils.instantiate(cfg.loss)


def get_teacher(args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    """The cached teacher, or train it on all 60,000 training pairs and cache it."""
    teacher = create_model("fmnist_pairs_teacher", num_classes=NUM_CLASSES, in_channels=1)
    path = Path(args.teacher_ckpt)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        teacher.load_state_dict(stored["model"])
        print(f"teacher: reusing {path} (test acc {stored['test_acc']:.4f})", flush=True)
        return teacher.eval(), float(stored["test_acc"])
    print(f"teacher: training for {args.teacher_epochs} epochs on 60,000 pairs", flush=True)
    started = time.time()
    L.seed_everything(0, workers=True)
    teacher = create_model("fmnist_pairs_teacher", num_classes=NUM_CLASSES, in_channels=1)

    def optimizer(params):
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def scheduler(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.teacher_epochs)

    module = DistillationModule(teacher, None, CELoss(), optimizer=optimizer, scheduler=scheduler)
    dm = datamodule(args, 128, 0)
    trainer(max_epochs=args.teacher_epochs).fit(module, datamodule=dm)
    acc = test_accuracy(module, dm)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": teacher.state_dict(), "test_acc": acc, "epochs": args.teacher_epochs}, path
    )
    print(f"teacher: test acc {acc:.4f} in {time.time() - started:.0f} s -> {path}", flush=True)
    return teacher.eval(), acc


def train_student(
    args: argparse.Namespace, teacher: torch.nn.Module, method: str, batch: int, seed: int
) -> dict[str, Any]:
    started = time.time()
    L.seed_everything(seed, workers=True)
    student = create_model("fmnist_pairs_student", num_classes=NUM_CLASSES, in_channels=1)
    optimizer, scheduler = recipe(args.lr, args.steps, args.warmup_steps)
    module = StepScheduledModule(student, teacher, make_loss(method), optimizer, scheduler)
    dm = datamodule(args, batch, seed)
    fit = trainer(max_steps=args.steps)
    fit.fit(module, datamodule=dm)
    acc = test_accuracy(module, dm)
    return {
        "method": method,
        "batch_size": batch,
        "seed": seed,
        "test_acc": acc,
        "steps": int(fit.global_step),
        "train_loss": float(fit.callback_metrics.get("train/loss", float("nan"))),
        "wall_s": round(time.time() - started, 2),
    }


# ----------------------------------------------------------------------------------- runs
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes results comparable (runs with other settings are not mixed in)."""
    return {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "lr": args.lr,
        "teacher_epochs": args.teacher_epochs,
    }


def planned_runs(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """``(method, batch, seed)`` of every run, the largest batches first (for balanced jobs)."""
    batches = sorted(args.batch_sizes, reverse=True)
    return [(m, b, s) for b in batches for s in args.seeds for m in args.methods]


def load_results(path: Path, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # The recorded runs also hold the memory's size in their settings; the rest must match.
    return [r for r in rows if all(r.get("settings", {}).get(k) == v for k, v in wanted.items())]


def run_worker(args: argparse.Namespace, shard: int, shards: int) -> None:
    """Run this shard's share of the missing runs (every ``shards``-th planned run)."""
    results = Path(args.work_dir) / "results.jsonl"
    teacher, _ = get_teacher(args)
    done = {
        (r["method"], r["batch_size"], r["seed"]) for r in load_results(results, settings(args))
    }
    started = time.time()
    for k, (method, batch, seed) in enumerate(planned_runs(args)):
        if k % shards != shard or (method, batch, seed) in done:
            continue
        row = train_student(args, teacher, method, batch, seed)
        row["settings"] = settings(args)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[{shard}/{shards}] {method:>22} B={batch:<4} seed={seed} "
            f"acc={100 * row['test_acc']:.2f}% steps={row['steps']} {row['wall_s']:.0f}s "
            f"(total {(time.time() - started) / 60:.1f} min)",
            flush=True,
        )


# ----------------------------------------------------------------------------------- report
Accuracies = dict[str, dict[int, dict[int, float]]]


def fill_no_memory_cells(accs: Accuracies) -> None:
    """Where a recorded memory method had no memory rows it was the method: its accuracies."""
    for method in RECORDED_METHODS:
        for b in accs.get(method, {}):
            if b >= RECORDED_MEMORY_ROWS:
                accs[method][b] = dict(accs.get("cskd_cswt", {}).get(b, {}))


def cell(values: list[float], signed: bool) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:+.2f} ± {std:.2f}" if signed else f"{mean:.2f} ± {std:.2f}"


def table(accs: Accuracies, batches, signed: bool = False, per_seed: bool = False) -> str:
    """Mean ± std over seeds per method and batch size (``per_seed``: the seeds' values)."""
    lines = [
        "| method | " + " | ".join(f"B = {b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for method, by_batch in accs.items():
        if not any(by_batch[b] for b in batches):
            continue
        if per_seed:
            fmt = "{:+.2f}" if signed else "{:.2f}"
            cells = [
                " / ".join(fmt.format(by_batch[b][s]) for s in sorted(by_batch[b])) or "-"
                for b in batches
            ]
        else:
            cells = [cell(list(by_batch[b].values()), signed) for b in batches]
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(accs: Accuracies, batches, teacher_acc, args: argparse.Namespace, path: Path) -> None:
    """Left: accuracy per method; right: accuracy minus KD's, each seed a dot, mean a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = minus_control(accs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for k, (method, by_batch) in enumerate(accs.items()):
        xs = [b for b in batches if by_batch[b]]
        if not xs:
            continue
        colour = f"C{list(LABELS).index(method)}"
        shift = 2 ** (0.04 * (k - 1))
        stats = [mean_std(list(by_batch[b].values())) for b in xs]
        axes[0].errorbar(
            [x * shift for x in xs],
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            color=colour,
            label=LABELS[method],
        )
        if method in diffs:
            means = [mean_std(list(diffs[method][b].values()))[0] for b in xs]
            axes[1].plot(
                [x * shift for x in xs], means, marker="o", color=colour, label=LABELS[method]
            )
            for b in xs:
                values = list(diffs[method][b].values())
                axes[1].scatter([b * shift] * len(values), values, color=colour, s=12, alpha=0.5)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(batches))
        ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlabel(
            f"global batch size (log2 scale; {args.steps} steps and the same LR at every size)"
        )
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("student test accuracy (%)")
    axes[0].set_title(
        f"Fashion-MNIST pairs (100 classes), fmnist_pairs_student; mean ± std over "
        f"{len(args.seeds)} seeds" + (f"; teacher {100 * teacher_acc:.2f}%" if teacher_acc else ""),
        fontsize=9,
    )
    axes[0].legend(fontsize=8)
    axes[1].axhline(0.0, color="C0", lw=1)
    axes[1].set_ylabel("test accuracy minus KD's, same seed (points)")
    axes[1].set_title("difference to the KD control: each seed (dots) and the mean", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, teacher_acc: float | None) -> str:
    work = Path(args.work_dir)
    rows = load_results(work / "results.jsonl", settings(args))
    batches = sorted(args.batch_sizes)
    recorded = [m for m in RECORDED_METHODS if any(r["method"] == m for r in rows)]
    methods = [*args.methods, *recorded]
    accs = summarise(rows, methods, batches, args.seeds)
    fill_no_memory_cells(accs)
    used = [r for r in rows if r["method"] in methods and r["seed"] in args.seeds]
    diffs = minus_control(accs)
    memory_diffs = {m: d for m, d in minus_control(accs, "cskd_cswt").items() if m in recorded}
    seeds = " / ".join(str(s) for s in args.seeds)
    sections = [
        (None, table(accs, batches)),
        ("Minus KD's accuracy with the same seed (points), mean ± std over seeds:", None),
        (None, table(diffs, batches, signed=True)),
    ]
    for control, what in (("ce", "the labels-only run"), ("kd_ce1", "KD with CE weight 1.0")):
        if control in accs:
            diff = {m: d for m, d in minus_control(accs, control).items() if m in args.methods}
            title = f"Minus {what}'s accuracy with the same seed (points), mean ± std:"
            sections += [(title, table(diff, batches, signed=True))]
            title = f"Per seed, minus {what} (points):"
            sections += [(title, table(diff, batches, signed=True, per_seed=True))]
    if recorded:
        title = "The memory variants minus CSKD + CSWT with the same seed (points), mean ± std:"
        sections += [(title, table(memory_diffs, batches, signed=True))]
    sections += [
        (f"Per seed {seeds}, test accuracy (%):", table(accs, batches, per_seed=True)),
        ("Per seed, minus KD (points):", table(diffs, batches, signed=True, per_seed=True)),
    ]
    if recorded:
        title = "Per seed, the memory variants minus CSKD + CSWT (points):"
        sections += [(title, table(memory_diffs, batches, signed=True, per_seed=True))]
    header = (
        f"Test accuracy (%) of fmnist_pairs_student on the 10,000 test pairs, mean ± std over "
        f"seeds {args.seeds}; {args.steps} steps at every batch size, LR {args.lr} (warm-up "
        f"{args.warmup_steps} steps, then cosine)"
        + (f", memory {RECORDED_MEMORY_ROWS} - B rows" if recorded else "")
        + (f"; teacher {100 * teacher_acc:.2f}%" if teacher_acc else "")
        + f". {len(used)} runs, {sum(r['wall_s'] for r in used) / 60:.1f} min of training "
        "and testing (sum over runs)."
    )
    text = "\n\n".join([header] + [part for pair in sections for part in pair if part]) + "\n"
    (work / "table.md").write_text(text)
    plot(accs, batches, teacher_acc, args, Path(args.plot))
    return text


# ----------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=400, help="optimiser steps at every batch size")
    p.add_argument("--warmup-steps", type=int, default=40, help="linear LR warm-up")
    p.add_argument("--lr", type=float, default=0.05, help="peak LR, the same at every batch size")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--work-dir", default="outputs/batch_size_study_100")
    p.add_argument("--teacher-ckpt", default=None, help="default: <work-dir>/teacher.pt")
    p.add_argument("--plot", default="docs/benchmarks/batch_size_100.png")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each")
    p.add_argument("--shard", default=None, help="i/n: run every n-th run from the i-th (worker)")
    p.add_argument("--report-only", action="store_true", help="redraw table and plot only")
    args = p.parse_args(argv)
    args.teacher_ckpt = args.teacher_ckpt or str(Path(args.work_dir) / "teacher.pt")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.shard is not None:
        shard, shards = (int(v) for v in args.shard.split("/"))
        run_worker(args, shard, shards)
        return
    if args.report_only:
        teacher_acc = None
        if Path(args.teacher_ckpt).is_file():
            stored = torch.load(args.teacher_ckpt, map_location="cpu", weights_only=True)
            teacher_acc = float(stored["test_acc"])
        print(report(args, teacher_acc))
        return
    print(
        f"batch-size study (100 classes) on {platform.node()} ({os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.jobs} jobs x 1 thread): {settings(args)}",
        flush=True,
    )
    started = time.time()
    _, teacher_acc = get_teacher(args)
    workers = [
        subprocess.Popen([sys.executable, __file__, *argv, "--shard", f"{i}/{args.jobs}"])
        for i in range(args.jobs)
    ]
    codes = [w.wait() for w in workers]
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); rerun to resume")
    print(report(args, teacher_acc))
    print(f"wall time {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
