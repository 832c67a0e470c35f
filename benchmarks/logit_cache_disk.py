"""Disk size of the teacher-logit cache for CIFAR-100 and ImageNet, float32 / float16 / top-k.

Computed from the size formula (:func:`cskd_lightning.logit_store.cache_size_bytes`, which the
unit tests check against the files a cache creates), not measured on a full cache: per epoch
and view (training logits and their completion records), and for a whole run of one view
(CIFAR-100: 240 epochs; ImageNet: 100 epochs) plus its evaluation split (stored exact, float32,
in a top-k cache). Decimal units (1 GB = 1e9 bytes). Prints a Markdown table::

    python benchmarks/logit_cache_disk.py
"""

from __future__ import annotations

import argparse

from cskd_lightning.logit_store import cache_size_bytes

DATASETS = {
    # name: (training samples N, classes C, evaluation samples, epochs of the run)
    "CIFAR-100": (50_000, 100, 10_000, 240),
    "ImageNet": (1_281_167, 1_000, 50_000, 100),
}
STORAGE = (("float32", None), ("float16", None), ("topk", 5), ("topk", 10))


def _size(value: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e3:.3g} kB"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    names = [d if k is None else f"top-{k}" for d, k in STORAGE]
    print("| data | what | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for data, (n, classes, n_eval, epochs) in DATASETS.items():
        per_epoch = [cache_size_bytes(1, n, 1, classes, d, topk=k) for d, k in STORAGE]
        run = [cache_size_bytes(epochs, n, 1, classes, d, n_eval, k) for d, k in STORAGE]
        ratio = [per_epoch[0] / b for b in per_epoch]
        print(
            f"| {data} (N = {n}, C = {classes}) | 1 epoch, 1 view | "
            + " | ".join(_size(b) for b in per_epoch)
            + " |"
        )
        print(
            f"| | {epochs} epochs, 1 view, with the {n_eval} evaluation images | "
            + " | ".join(_size(b) for b in run)
            + " |"
        )
        print("| | float32 / this (per epoch) | " + " | ".join(f"{r:.0f}x" for r in ratio) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
