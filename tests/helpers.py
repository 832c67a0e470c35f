"""Harnesses shared by ``tests/unit`` and ``tests/integration`` (the library side; the Hydra
application's are in ``app_helpers.py``): a quiet CPU ``Trainer``, a process group of real gloo
processes, data sets written in their real on-disk formats, and the real data's locations.

None of them stands in for the product: they build the inputs and the machinery (processes, a
trainer) that the product is then run on.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
"""The repository's root (``conf/``, ``docs/``, ``examples/``, README.md)."""

# --------------------------------------------------------------------------- real data
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install "
    "dataset-fashion-mnist)",
)


def raw_digits_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split as ``load_digits`` gives it: pixels 0..16, ``(360, 1, 8, 8)``, and
    the labels; selected with the datamodule's split constants, nothing else of it."""
    from sklearn.datasets import load_digits

    from cskd_lightning.data.digits import TEST_FRACTION, TEST_SPLIT_SEED
    from cskd_lightning.data.loading import stratified_split

    bunch = load_digits()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    _, test_idx = stratified_split(labels, math.ceil(TEST_FRACTION * len(labels)), TEST_SPLIT_SEED)
    images = torch.as_tensor(np.asarray(bunch.images)[test_idx]).unsqueeze(1)
    return images, labels[test_idx]


def student_pt_accuracy(
    path: Path, images: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> float:
    """Top-1 accuracy of a ``student.pt`` on raw ``images`` (the digits test set by default),
    through ``load_student`` and the preprocessing the file records, in this one process."""
    from cskd_lightning import load_student

    model, preprocess, _ = load_student(path)
    if images is None:
        images, labels = raw_digits_test_set()
    with torch.no_grad():
        return float((model(preprocess(images)).argmax(-1) == labels).float().mean())


# --------------------------------------------------------------------------- Trainer
QUIET = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
"""The Trainer options of a test run: the CPU, one process, nothing written or printed."""


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """``L.Trainer(**QUIET)`` with ``kwargs`` on top (``max_steps=``, ``logger=``, ...)."""
    return L.Trainer(**{**QUIET, **kwargs})


def process_view(rank: int = 0, world: int = 1) -> SimpleNamespace:
    """What a datamodule reads of its trainer under DDP (``world_size``, ``global_rank``, the
    device), to build rank ``rank``'s loaders of a ``world``-process run in this process."""
    return SimpleNamespace(
        world_size=world,
        global_rank=rank,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


# --------------------------------------------------------------------------- gloo processes
def free_port() -> int:
    """A TCP port nobody listens on now (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_process(
    rank: int, worker: Callable, port: int, world: int, out_dir: str, args: tuple
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = worker(rank, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # No process leaves while another may still be in a collective with it. (A worker that
        # raises skips this: the parent's join then stops the others.)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_gloo(worker: Callable[..., Any], *args: Any, world: int = 2) -> list[Any]:
    """Run ``worker(rank, *args)`` in ``world`` real processes joined by a gloo process group
    (``torch.distributed`` is initialised in each); return what each rank's worker returned,
    in rank order.

    The processes are forked where the platform allows it: they inherit the imported library,
    where spawned ones would each import torch and Lightning again (about 10 s on a busy
    2-core machine). ``worker`` must be a module-level function for the spawn fallback.
    """
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _gloo_process,
            args=(worker, free_port(), world, out_dir, args),
            nprocs=world,
            join=True,
            start_method=method,
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]


# --------------------------------------------------------------------------- data on disk
def read_cifar_test_set(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw test images ``(N, 3, 32, 32)`` (uint8) and labels of a CIFAR folder, read from
    its pickle here."""
    name, key = (
        ("test_batch", "labels")
        if folder.name == "cifar-10-batches-py"
        else ("test", "fine_labels")
    )
    with open(folder / name, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.asarray(raw["data"]).reshape(-1, 3, 32, 32))
    return images, torch.as_tensor(raw[key])


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_entry(n: int, classes: int, rng: np.random.Generator, prefix: str) -> dict:
    labels = [i % classes for i in range(n)]
    entry: dict[str, object] = {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "labels" if classes == 10 else "fine_labels": labels,
        "filenames": [f"{prefix}_{i}.png" for i in range(n)],
    }
    if classes == 100:
        entry["coarse_labels"] = [y // 5 for y in labels]
    return entry


def write_cifar(root: Path, classes: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10 (``classes=10``) or CIFAR-100 (``classes=100``) under ``root`` in the real pickle
    format torchvision reads: random images, label ``i % classes`` for image ``i``.

    CIFAR-10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the
    training images split over the 5 batches); CIFAR-100: ``root/cifar-100-python/{train, test,
    meta}``. Returns that folder.
    """
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        per_batch = n_train // 5
        for i in range(1, 6):
            _pickle(folder / f"data_batch_{i}", _cifar_entry(per_batch, 10, rng, f"train{i}"))
        _pickle(folder / "test_batch", _cifar_entry(n_test, 10, rng, "test"))
        _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
        return folder
    if classes != 100:
        raise ValueError(f"CIFAR has 10 or 100 classes, not {classes}")
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "train", _cifar_entry(n_train, 100, rng, "train"))
    _pickle(folder / "test", _cifar_entry(n_test, 100, rng, "test"))
    names = {"fine_label_names": [f"f{i}" for i in range(100)]}
    _pickle(folder / "meta", {**names, "coarse_label_names": [f"g{i}" for i in range(20)]})
    return folder


def write_image_folder(
    root: Path, classes: Sequence[str], per_split: Mapping[str, int], size: int = 40
) -> Path:
    """An ImageFolder tree ``root/<split>/<class>/<i>.png``: ``per_split[split]`` random
    ``size x size`` RGB images per class. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
