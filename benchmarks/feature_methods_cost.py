"""What each distillation method adds to KD: extra trainable parameters (and buffers), and the
training step's time relative to KD's, measured in ONE run.

For a pair (``fmnist``: ``pair=fashion_mnist``'s fmnist_teacher -> fmnist_student on 28x28
inputs, batch 128; ``cifar``: ``resnet32x4 -> resnet8x4`` on 32x32 inputs, batch 64, the
CIFAR-100 protocol's) every method's ``DistillationModule`` is built as ``cskd-train`` builds it
(the ``distill=<method>`` loss, the pair config's ``features`` block), its feature loss prepared
from one batch, and a step is ``compute_loss`` + backward + an SGD step over
``trainable_modules()`` on pre-made random batches (timing does not depend on the pixel values;
CRD's memory holds the real training-set size: 55,000 / 50,000). The methods are timed round
robin, ``--trials`` times ``--steps`` steps each after a warm-up, and each method's ratio to KD
is the median of the per-trial ratios; this process's CPU time is the clock (on a shared
machine it counts the work done, not the waits for a core), with one intra-op thread.

    python benchmarks/feature_methods_cost.py --pair fmnist
    python benchmarks/feature_methods_cost.py --pair cifar --steps 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cskd_lightning import DistillationModule
from cskd_lightning.api import make_loss
from cskd_lightning.data.device import SampleBatch
from cskd_lightning.models import create_model

METHODS = ["kd", "cskd_cswt", "wttm", "fitnet", "at", "rkd", "pkt", "sp", "crd", "reviewkd"]
PAIRS = {
    # name: (teacher, student, pair config, input shape, classes, batch, training-set size)
    "fmnist": ("fmnist_teacher", "fmnist_student", "fashion_mnist", (1, 28, 28), 10, 128, 55000),
    "cifar": ("resnet32x4", "resnet8x4", "resnet32x4_resnet8x4", (3, 32, 32), 100, 64, 50000),
}
CONF = Path(__file__).resolve().parent.parent / "conf" / "pair"


def build(method: str, pair: str) -> tuple[DistillationModule, torch.optim.Optimizer]:
    teacher, student, conf, shape, classes, batch, n_train = PAIRS[pair]
    torch.manual_seed(0)
    t = create_model(teacher, num_classes=classes, in_channels=shape[0])
    s = create_model(student, num_classes=classes, in_channels=shape[0])
    features = OmegaConf.to_container(OmegaConf.load(CONF / f"{conf}.yaml").features)
    module = DistillationModule(s, t, make_loss(method), features=features)
    if module.feature_hooks is not None:
        module.prepare_feature_loss(torch.randn(2, *shape), n_train)
    params = [p for m in module.trainable_modules() for p in m.parameters() if p.requires_grad]
    return module.train(), torch.optim.SGD(params, lr=0.01, momentum=0.9)


def extra_count(module: DistillationModule) -> int:
    loss = module.loss
    return sum(p.numel() for p in loss.parameters()) + sum(b.numel() for b in loss.buffers())


def timed_steps(module, optimizer, batches) -> float:
    start = time.process_time()
    for batch in batches:
        _, terms = module.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
    return (time.process_time() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="fmnist")
    parser.add_argument("--steps", type=int, default=10, help="steps per trial")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, _, _, shape, classes, batch, n_train = PAIRS[args.pair]
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        index = torch.randint(0, n_train, (batch,), generator=gen)
        x = torch.randn(batch, *shape, generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        batches.append(SampleBatch(x, y, index, index.numpy(), 0, "train"))
    built = {m: build(m, args.pair) for m in METHODS}
    for module, optimizer in built.values():  # warm-up
        timed_steps(module, optimizer, batches[:2])
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.trials):
        for m in METHODS:
            times[m].append(timed_steps(*built[m], batches))
    print(
        f"# {args.pair}: batch {batch}, {args.steps} steps x {args.trials} trials, CPU time, "
        f"1 thread, {dt.date.today()}"
    )
    print("| method | extra parameters + buffers | step (ms) | step / KD's |")
    print("|---|---|---|---|")
    for m in METHODS:
        ratio = statistics.median(a / b for a, b in zip(times[m], times["kd"], strict=True))
        step_ms = 1000 * statistics.median(times[m])
        print(f"| {m} | {extra_count(built[m][0]):,} | {step_ms:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
