"""The top-k study's table and plot: test accuracy of each method with the float32 cache and
with top-k storage, seed by seed (``benchmarks/logit_cache_topk_study.sh`` runs it at the end).

    python benchmarks/logit_cache_topk_plot.py OUT_DIR   # writes OUT_DIR/topk_accuracy.{md,png}

Reads every ``summary.json`` two levels under ``OUT_DIR`` (the arm is ``float32``, ``top-<k>``
or, for a control run without the cache such as ``distill=ce``, ``no cache``, from the run's
saved config); prints and writes a Markdown table
(per seed, mean ± sample std, and the per-seed difference to the float32 arm), and a plot with
one panel per method, one line per seed across the arms.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def read_runs(out_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{method: {arm: {seed: test accuracy in %}}}``."""
    runs: dict[str, dict[str, dict[int, float]]] = {}
    for summary in sorted(out_dir.glob("*/*/summary.json")):
        record = json.loads(summary.read_text())
        teacher = OmegaConf.load(summary.parent / "config.yaml").teacher
        arm = "no cache"  # a control: the label-only run (distill=ce)
        if teacher.get("logit_cache") and teacher.get("logit_cache_dtype") == "topk":
            arm = f"top-{teacher.logit_cache_topk}"
        elif teacher.get("logit_cache"):
            arm = str(teacher.get("logit_cache_dtype", "float32"))
        method = runs.setdefault(record["method"], {})
        method.setdefault(arm, {})[record["seed"]] = 100 * record["student"]["test_acc"]
    return runs


def table(runs: dict[str, dict[str, dict[int, float]]]) -> str:
    lines = [
        "| method | storage | test acc (%) per seed | mean ± std | minus float32, per seed |",
        "|---|---|---|---|---|",
    ]
    for method, arms in runs.items():
        exact = arms.get("float32", {})
        for arm in sorted(arms, key=_arm_order):
            seeds = sorted(arms[arm])
            values = [arms[arm][s] for s in seeds]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            diffs = [arms[arm][s] - exact[s] for s in seeds if s in exact]
            versus = ""
            if arm != "float32" and diffs:
                versus = " / ".join(f"{d:+.2f}" for d in diffs)
            lines.append(
                f"| `{method}` | {arm} | {' / '.join(f'{v:.2f}' for v in values)} "
                f"(seeds {', '.join(map(str, seeds))}) | {statistics.mean(values):.2f}{spread} "
                f"| {versus} |"
            )
    return "\n".join(lines)


def _arm_order(arm: str) -> tuple[int, int]:
    """float32 first, then top-k from the largest k down."""
    return (0, 0) if not arm.startswith("top-") else (1, -int(arm[4:]))


def plot(runs: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    """One panel per distillation method, one line per seed across the storage arms; a
    control without the cache (``ce``) is drawn in every panel as a dashed line at its mean."""
    controls = {m: arms["no cache"] for m, arms in runs.items() if set(arms) == {"no cache"}}
    methods = {m: arms for m, arms in runs.items() if m not in controls}
    fig, axes = plt.subplots(1, len(methods), figsize=(4.8 * len(methods), 3.6), squeeze=False)
    for ax, (method, arms) in zip(axes[0], methods.items(), strict=True):
        order = sorted(arms, key=_arm_order)
        for seed in sorted({s for arm in arms.values() for s in arm}):
            values = [arms[a].get(seed, float("nan")) for a in order]
            ax.plot(order, values, "o-", label=f"seed {seed}")
        for name, seeds in controls.items():
            mean = statistics.mean(seeds.values())
            ax.axhline(mean, color="gray", ls="--", label=f"{name} (no teacher), mean")
        ax.set_title(f"{method}: teacher logits stored as")
        ax.set_ylabel("student test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    runs = read_runs(args.out_dir)
    text = table(runs)
    print(text)
    (args.out_dir / "topk_accuracy.md").write_text(text + "\n")
    plot(runs, args.out_dir / "topk_accuracy.png")


if __name__ == "__main__":
    main()
