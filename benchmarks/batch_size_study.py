"""How test accuracy moves with the global batch size: KD vs CSKD + CSWT.

CSKD's per-class batch cosine and the CSWT min/max are taken over the batch
axis, so the method's loss depends on the batch size. This study trains the Fashion-MNIST pair
(``pair=fashion_mnist``: ``fmnist_teacher`` -> ``fmnist_student``) at several global batch sizes
with

* ``kd``: Hinton KD (per sample), the control: it moves with the batch size only through the
  optimisation (fewer, larger steps);
* ``cskd_cswt``: the method.

The study as recorded in docs/benchmarks/batch_size.md also ran a logit memory (commit
ee74522); the memory has since been removed from the package (the last commit with it is
05927b3), so this script runs the two methods above.

The losses are built from the repo's ``conf/distill/<method>.yaml``. Protocol: one teacher,
trained once on the whole training set and cached (``--teacher-ckpt``); every student run uses
the same fixed, class-stratified ``--train-size`` subset of the training set, the same number
of ``--epochs`` at every batch size, the pair's student recipe (SGD, momentum 0.9, Nesterov,
weight decay 5e-4, cosine schedule per epoch) with the learning rate scaled linearly from
``--base-lr`` at ``--base-batch``; the seed sets the student's initialisation, the sample order
and the augmentation draws. Runs go through Lightning's ``Trainer`` with the repo's
``DistillationModule`` (no progress bar, logger, checkpoints or validation) and the device
pipeline (``DeviceDataModule(FashionMNISTDataModule(...))``); the test accuracy is on the
10,000 test images.

Every finished run is appended to ``<work-dir>/results.jsonl`` (an interrupted study resumes
where it stopped; ``--report-only`` just redraws). Outputs: ``<work-dir>/table.md`` (mean +- std
test accuracy per method and batch size, and the spread max - min of the means across batch
sizes) and the plot ``--plot`` (accuracy vs batch size, one line per method, error bars one
standard deviation over the seeds).

The recorded study (45 runs, the memory included) took about 26 minutes on 2 shared CPU cores
(docs/benchmarks/batch_size.md); the defaults are 30 of those runs::

    python benchmarks/batch_size_study.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import OmegaConf

from cskd_lightning.data import DeviceDataModule, FashionMNISTDataModule
from cskd_lightning.data.loading import stratified_split
from cskd_lightning.losses import CELoss
from cskd_lightning.models import create_model
from cskd_lightning.module import DistillationModule

METHODS = ("kd", "cskd_cswt")
LABELS = {"kd": "KD (control)", "cskd_cswt": "CSKD + CSWT"}
DEFAULT_DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------- data
class SubsetFashionMNIST(DeviceDataModule):
    """Fashion-MNIST on the device pipeline, training on a fixed stratified subset.

    ``train_size`` images of the 60,000 training images (``None``: all of them), chosen with
    ``subset_seed`` and so the same for every run; no validation split (``val_split=0``); the
    test set is the usual 10,000 images. ``seed`` drives the order and the augmentation.
    """

    def __init__(self, train_size: int | None, subset_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(FashionMNISTDataModule(val_split=0, **kwargs))
        self.train_size = train_size
        self.subset_seed = subset_seed

    def _load_cpu(self) -> dict[str, torch.Tensor]:
        tensors = super()._load_cpu()
        n = int(tensors["train_labels"].shape[0])
        if self.train_size is not None and self.train_size < n:
            _, keep = stratified_split(tensors["train_labels"], self.train_size, self.subset_seed)
            idx = torch.from_numpy(keep)
            tensors["train_images"] = tensors["train_images"][idx].contiguous()
            tensors["train_labels"] = tensors["train_labels"][idx].contiguous()
        return tensors


def datamodule(args: argparse.Namespace, batch: int, seed: int, train_size: int | None):
    return SubsetFashionMNIST(
        train_size=train_size,
        data_dir=args.data_dir,
        batch_size=batch,
        eval_batch_size=1000,
        seed=seed,
    )


# ----------------------------------------------------------------------------------- training
def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def recipe(lr: float, epochs: int) -> tuple[Any, Any]:
    """The pair's recipe (conf/pair/fashion_mnist.yaml) with the given learning rate."""

    def optimizer(params):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def scheduler(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    return optimizer, scheduler


def test_accuracy(module: DistillationModule, dm: L.LightningDataModule) -> float:
    results = trainer(1).test(module, datamodule=dm, verbose=False)
    return float(results[0]["test/acc"])


def make_loss(method: str) -> torch.nn.Module:
    """The loss of ``conf/distill/<method>.yaml``."""
    cfg = OmegaConf.load(str(files("cskd_lightning.conf") / "distill" / f"{method}.yaml"))
    return hydra.utils.instantiate(cfg.loss)


def get_teacher(args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    """The cached teacher, or train it on the whole training set and cache it."""
    teacher = create_model("fmnist_teacher", num_classes=10, in_channels=1)
    path = Path(args.teacher_ckpt)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        teacher.load_state_dict(stored["model"])
        print(f"teacher: reusing {path} (test acc {stored['test_acc']:.4f})", flush=True)
        return teacher.eval(), float(stored["test_acc"])
    print(f"teacher: training for {args.teacher_epochs} epochs on 60,000 images", flush=True)
    started = time.time()
    L.seed_everything(0, workers=True)
    teacher = create_model("fmnist_teacher", num_classes=10, in_channels=1)
    optimizer, scheduler = recipe(0.05, args.teacher_epochs)
    module = DistillationModule(teacher, None, CELoss(), optimizer=optimizer, scheduler=scheduler)
    dm = datamodule(args, 128, 0, None)
    trainer(args.teacher_epochs).fit(module, datamodule=dm)
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
    student = create_model("fmnist_student", num_classes=10, in_channels=1)
    lr = args.base_lr * batch / args.base_batch
    optimizer, scheduler = recipe(lr, args.epochs)
    module = DistillationModule(student, teacher, make_loss(method), optimizer, scheduler)
    dm = datamodule(args, batch, seed, args.train_size)
    fit = trainer(args.epochs)
    fit.fit(module, datamodule=dm)
    acc = test_accuracy(module, dm)
    return {
        "method": method,
        "batch_size": batch,
        "seed": seed,
        "test_acc": acc,
        "lr": lr,
        "steps": int(fit.global_step),
        "train_loss": float(fit.callback_metrics.get("train/loss", float("nan"))),
        "wall_s": round(time.time() - started, 2),
    }


# ----------------------------------------------------------------------------------- report
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes results comparable (runs with other settings are not mixed in)."""
    return {
        "train_size": args.train_size,
        "epochs": args.epochs,
        "base_lr": args.base_lr,
        "base_batch": args.base_batch,
        "teacher_epochs": args.teacher_epochs,
    }


def load_results(path: Path, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Records of older versions hold more settings (the memory's size); the rest must match.
    return [r for r in rows if all(r.get("settings", {}).get(k) == v for k, v in wanted.items())]


Accuracies = dict[str, dict[int, dict[int, float]]]
"""``accs[method][batch_size][seed]``: test accuracy in percent."""


def summarise(rows: list[dict[str, Any]], methods, batches, seeds) -> Accuracies:
    accs: Accuracies = {m: {b: {} for b in batches} for m in methods}
    for r in rows:
        if r["method"] in accs and r["batch_size"] in accs[r["method"]] and r["seed"] in seeds:
            accs[r["method"]][r["batch_size"]][r["seed"]] = 100.0 * r["test_acc"]
    return accs


def minus_control(accs: Accuracies, control: str = "kd") -> Accuracies:
    """Each method's accuracy minus the control's, paired by seed (same init, order, draws)."""
    if control not in accs:
        return {}
    return {
        method: {
            b: {s: acc - accs[control][b][s] for s, acc in by_seed.items() if s in accs[control][b]}
            for b, by_seed in by_batch.items()
        }
        for method, by_batch in accs.items()
        if method != control
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(accs: Accuracies, batches, signed: bool = False) -> str:
    """Mean ± std over seeds per method and batch size, and the spread of the means."""
    head = "| method | " + " | ".join(f"B = {b}" for b in batches) + " | spread (max - min) |"
    lines = [head, "|---|" + "---:|" * (len(batches) + 1)]
    fmt = "{:+.2f}" if signed else "{:.2f}"
    for method, by_batch in accs.items():
        cells, means = [], []
        for b in batches:
            values = list(by_batch[b].values())
            if values:
                mean, std = mean_std(values)
                means.append(mean)
                cells.append(f"{fmt.format(mean)} ± {std:.2f}")
            else:
                cells.append("-")
        spread = f"{max(means) - min(means):.2f}" if len(means) > 1 else "-"
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + f" | {spread} |")
    return "\n".join(lines)


def _errorbars(ax, accs: Accuracies, batches, offset0: int = 1) -> None:
    for k, (method, by_batch) in enumerate(accs.items()):
        xs = [b for b in batches if by_batch[b]]
        if not xs:
            continue
        stats = [mean_std(list(by_batch[b].values())) for b in xs]
        # a small horizontal offset per method keeps the error bars apart
        shifted = [x * 2 ** (0.04 * (k - offset0)) for x in xs]
        ax.errorbar(
            shifted,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            label=LABELS.get(method, method),
            color=f"C{list(LABELS).index(method) if method in LABELS else k}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batches))
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("global batch size (log2 scale; LR scaled linearly)")
    ax.grid(True, alpha=0.3)


def plot(accs: Accuracies, batches, teacher_acc, args: argparse.Namespace, path: Path) -> None:
    """Left: accuracy per method; right: accuracy minus KD's (paired by seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = minus_control(accs)
    fig, axes = plt.subplots(1, 2 if diffs else 1, figsize=(12 if diffs else 6.4, 4.4))
    axes = list(axes) if diffs else [axes]
    _errorbars(axes[0], accs, batches)
    axes[0].set_ylabel("student test accuracy (%)")
    axes[0].set_title(
        f"Fashion-MNIST, fmnist_student, {args.train_size} train images, {args.epochs} epochs; "
        f"mean ± std over {len(args.seeds)} seeds"
        + (f"; teacher {100 * teacher_acc:.2f}%" if teacher_acc else ""),
        fontsize=9,
    )
    if teacher_acc:
        axes[0].axhline(100 * teacher_acc, color="grey", ls="--", lw=1, label="teacher")
    axes[0].legend(fontsize=8)
    if diffs:
        _errorbars(axes[1], diffs, batches, offset0=0)
        axes[1].axhline(0.0, color="C0", lw=1)
        axes[1].set_ylabel("test accuracy minus KD's, same seed (points)")
        axes[1].set_title("difference to the KD control (paired by seed)", fontsize=9)
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, teacher_acc: float | None) -> str:
    work = Path(args.work_dir)
    rows = load_results(work / "results.jsonl", settings(args))
    accs = summarise(rows, args.methods, args.batch_sizes, args.seeds)
    used = [r for r in rows if r["method"] in args.methods and r["seed"] in args.seeds]
    header = (
        f"Test accuracy (%) of fmnist_student, mean ± std over seeds {args.seeds}; "
        f"{args.train_size} training images, {args.epochs} epochs, LR {args.base_lr} x B / "
        f"{args.base_batch}"
        + (f"; teacher {100 * teacher_acc:.2f}%" if teacher_acc else "")
        + f". {len(used)} runs, {sum(r['wall_s'] for r in used) / 60:.1f} min of training "
        "and testing."
    )
    text = header + "\n\n" + markdown_table(accs, args.batch_sizes) + "\n"
    diffs = minus_control(accs)
    if diffs:
        text += (
            "\nMinus KD's accuracy with the same seed (points), mean ± std over seeds:\n\n"
            + markdown_table(diffs, args.batch_sizes, signed=True)
            + "\n"
        )
    (work / "table.md").write_text(text)
    plot(accs, args.batch_sizes, teacher_acc, args, Path(args.plot))
    return text


# ----------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=2, help="student epochs at every batch size")
    p.add_argument("--train-size", type=int, default=10000, help="fixed training subset")
    p.add_argument("--base-lr", type=float, default=0.05, help="learning rate at --base-batch")
    p.add_argument("--base-batch", type=int, default=64)
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--work-dir", default="outputs/batch_size_study")
    p.add_argument("--teacher-ckpt", default=None, help="default: <work-dir>/teacher.pt")
    p.add_argument("--plot", default="docs/benchmarks/batch_size.png")
    p.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1: no spin-wait contention)"
    )
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    p.add_argument("--report-only", action="store_true", help="redraw table and plot only")
    args = p.parse_args(argv)
    args.teacher_ckpt = args.teacher_ckpt or str(Path(args.work_dir) / "teacher.pt")
    return args


def quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*You defined a `validation_step`.*")
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\).*")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    if args.report_only:
        teacher_acc = None
        if Path(args.teacher_ckpt).is_file():
            stored = torch.load(args.teacher_ckpt, map_location="cpu", weights_only=True)
            teacher_acc = float(stored["test_acc"])
        print(report(args, teacher_acc))
        return
    print(
        f"batch-size study on {platform.node()} ({os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} threads): {settings(args)}",
        flush=True,
    )
    started = time.time()
    teacher, teacher_acc = get_teacher(args)
    done = {
        (r["method"], r["batch_size"], r["seed"]) for r in load_results(results, settings(args))
    }
    new_runs = 0
    for seed in args.seeds:
        for batch in args.batch_sizes:
            for method in args.methods:
                if (method, batch, seed) in done:
                    continue
                if args.max_runs is not None and new_runs >= args.max_runs:
                    break
                row = train_student(args, teacher, method, batch, seed)
                row["settings"] = settings(args)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                new_runs += 1
                print(
                    f"{method:>17} B={batch:<4} seed={seed} acc={100 * row['test_acc']:.2f}% "
                    f"steps={row['steps']} {row['wall_s']:.0f}s "
                    f"(total {(time.time() - started) / 60:.1f} min)",
                    flush=True,
                )
    print(report(args, teacher_acc))
    print(f"wall time {(time.time() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
