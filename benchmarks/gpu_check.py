"""One command that checks the GPU paths of cskd-lightning and writes a markdown record.

    python benchmarks/gpu_check.py                 # on a CUDA machine, under 8 minutes
    python benchmarks/gpu_check.py --smoke         # the same code paths on the CPU, tiny sizes

Checks, each a row of the record (PASS / FAIL / SKIP, with what was measured):

1. ``precision``: a few Lightning training steps in ``bf16-mixed`` and in ``16-mixed``: the
   student's and the teacher's logits are in the low precision, every loss term is float32.
2. ``channels_last + torch.compile``: a few Lightning training steps with
   ``channels_last=True, compile_models=True``: finite loss, weights in channels-last format.
3. ``no host sync``: a bare loop over the device pipeline (``data=cifar100_device``'s ops on
   CUDA, two views) with the teacher-logit cache, storing (miss) and then reading (hit), every
   step after an epoch's first under ``torch.cuda.set_sync_debug_mode("error")`` (a host sync
   raises). ``check_inputs=False`` (that option syncs once per step by design).
4. ``logit cache``: the warm-cache student equals the live-teacher student after the same
   steps (fp32; on CUDA up to the non-determinism of cuDNN, so the largest weight difference
   is reported).
5. ``epoch``: one epoch of ``resnet32x4 -> resnet8x4`` (CSKD + CSWT, ``bf16-mixed`` on CUDA)
   on CIFAR-100-sized synthetic data (50000 x 3 x 32 x 32 ``uint8``, 100 classes, device
   pipeline): a ``ce`` epoch of the student, the live-teacher epoch, the epoch that stores the
   cache and the warm-cache epoch: epoch time, images/s, peak GPU memory.

``--smoke`` runs all of it on the CPU at tiny sizes (small CNNs instead of the ResNets in
checks 2 and 5, 128 images) and says what it skipped: ``16-mixed`` (CUDA only), the sync
check's debug mode (CUDA only; the loop runs unchecked), Inductor (``torch.compile`` runs with
``backend="eager"``: Dynamo's capture without a C++ build) and the memory figures. The test
suite runs ``--smoke`` so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from synthetic import EpochTimer, SyntheticCIFAR, plain_trainer

from cskd_lightning import CELoss, CSKDFullLoss, CSKDLoss, DistillationModule
from cskd_lightning.app.jobs import quiet_logs
from cskd_lightning.data import DeviceDataModule
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.models import create_model

Row = tuple[str, str, str]  # (check, status, detail)


class DtypeProbe(DistillationModule):
    """Records the dtypes of the logits and of every loss term (a user's subclass hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, set[str]] = {"student": set(), "teacher": set(), "terms": set()}

    def forward_student(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward_student(x)
        self.seen["student"].add(str(out.dtype))
        return out

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward_teacher(x)
        self.seen["teacher"].add(str(out.dtype))
        return out

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, terms = super().compute_loss(batch)
        self.seen["terms"].update(str(v.dtype) for v in terms.values())
        return logits, terms


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = not args.smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.pair = (
            "resnet32x4 -> resnet8x4" if self.cuda else "digits_teacher -> digits_student (smoke)"
        )

    # ------------------------------------------------------------------ helpers
    def trainer(self, callbacks: list, **kwargs: Any):
        return plain_trainer(
            callbacks, accelerator="gpu" if self.cuda else "cpu", devices=1, **kwargs
        )

    def data(self, n: int, batch: int, two_view: bool = False) -> DeviceDataModule:
        source = SyntheticCIFAR(n, n_test=256, batch_size=batch, two_view=two_view)
        return DeviceDataModule(source, device=str(self.device))

    def models(self, big: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        if big:
            return create_model("resnet32x4", num_classes=100), create_model("resnet8x4")
        teacher = create_model("digits_teacher", num_classes=100, in_channels=3)
        return teacher, create_model("digits_student", num_classes=100, in_channels=3)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        started = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            detail = fn()
            status = "SKIP" if detail.startswith("skipped") else "PASS"
        except Exception as err:  # noqa: BLE001 - a failed check is a row of the record
            traceback.print_exc()
            status, detail = "FAIL", f"{type(err).__name__}: {err}".replace("\n", " ")[:400]
        took = time.perf_counter() - started
        print(f"[{name}] {status} ({took:.1f} s): {detail}", flush=True)
        self.rows.append((name, status, f"{detail} ({took:.0f} s)"))

    # ------------------------------------------------------------------ 1. precision
    def precision(self, precision: str) -> str:
        if precision == "16-mixed" and not self.cuda:
            return "skipped: 16-mixed autocast is CUDA only"
        teacher, student = self.models(big=False)
        module = DtypeProbe(student, teacher, CSKDLoss(), check_inputs=False)
        trainer = self.trainer([], precision=precision, limit_train_batches=3)
        trainer.fit(module, datamodule=self.data(512, 64))
        low = {"bf16-mixed": "torch.bfloat16", "16-mixed": "torch.float16"}[precision]
        seen = module.seen
        assert seen["student"] == {low} and seen["teacher"] == {low}, seen
        assert seen["terms"] == {"torch.float32"}, seen
        loss = float(trainer.callback_metrics["train/loss"])
        assert loss == loss and abs(loss) < float("inf"), loss
        return f"logits {low}, loss terms float32, train/loss {loss:.4f}"

    # ------------------------------------------------------------------ 2. channels_last + compile
    def compile_channels_last(self) -> str:
        teacher, student = self.models(big=self.cuda)
        module = DistillationModule(
            student,
            teacher,
            CSKDLoss(),
            check_inputs=False,
            channels_last=True,
            compile_models=True,
        )
        patch: contextlib.AbstractContextManager = contextlib.nullcontext()
        note = "Inductor"
        if not self.cuda:
            patch = mock.patch.object(
                torch, "compile", functools.partial(torch.compile, backend="eager")
            )
            note = "backend=eager (smoke: no Inductor C++ build)"
        precision = "bf16-mixed" if self.cuda else "32-true"
        with patch:
            trainer = self.trainer([], precision=precision, limit_train_batches=4)
            trainer.fit(module, datamodule=self.data(512, 64))
        conv = next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert "student" in module.__dict__.get("_compiled_models", {})
        loss = float(trainer.callback_metrics["train/loss"])
        assert loss == loss and abs(loss) < float("inf"), loss
        return f"{precision}, torch.compile {note}, channels_last weights, train/loss {loss:.4f}"

    # ------------------------------------------------------------------ 3./4. sync + cache
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        if not self.cuda:
            yield
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def bare_epoch(self, module: DistillationModule, dm: Any, epoch: int, steps: int) -> int:
        """``steps`` training steps of ``epoch``; every step after the first without a sync."""
        optimizer = torch.optim.SGD(module.student.parameters(), lr=0.05, momentum=0.9)
        loader = dm.train_dataloader()
        loader.set_epoch(epoch)
        it = iter(loader)
        done = 0
        for step in range(steps):
            guard = self.no_sync() if step > 0 else contextlib.nullcontext()
            with guard:
                batch = next(it)
                _, terms = module.compute_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
            done += 1
        return done

    def sync_and_cache(self) -> str:
        steps = 4 if not self.cuda else 20
        dm = self.data(64 * steps, 64, two_view=True)
        dm.setup("fit")
        teacher, student = self.models(big=False)
        cache = TeacherLogitCache(self.tmp / "sync", "check")
        module = DistillationModule(student, teacher, CSKDFullLoss(), check_inputs=False)
        module.to(self.device)
        assert cache.attach(module, dm, accelerator=self.device.type)
        self.bare_epoch(module, dm, 0, steps)  # miss: the teacher runs, rows are recorded
        cache.end_epoch()
        self.bare_epoch(module, dm, 0, steps)  # hit: every batch from the cache
        cache.end_epoch()
        assert cache.stats == {"computed": steps, "cached": steps}, cache.stats
        mode = "set_sync_debug_mode('error')" if self.cuda else "unchecked (CUDA only)"
        return f"{2 * steps} steps (two views; {steps} stored, {steps} read), host syncs: {mode}"

    def cache_matches_live(self) -> str:
        steps = 4 if not self.cuda else 10
        results = []
        for use_cache in (False, True, True):  # live, storing, warm
            dm = self.data(64 * steps, 64)
            dm.setup("fit")
            teacher, student = self.models(big=False)
            module = DistillationModule(student, teacher, CSKDLoss(), check_inputs=False)
            module.to(self.device)
            cache = TeacherLogitCache(self.tmp / "match", "check")
            if use_cache:
                cache.attach(module, dm, accelerator=self.device.type)
            torch.manual_seed(0)
            self.bare_epoch(module, dm, 0, steps)
            cache.end_epoch()
            results.append((student.state_dict(), dict(cache.stats)))
        (live, _), (_, stored), (warm, read) = results
        assert stored["computed"] == steps and read == {"computed": 0, "cached": steps}, read
        diff = max(float((live[k].float() - warm[k].float()).abs().max()) for k in live)
        if not self.cuda:
            assert diff == 0.0, diff
        what = f"warm-cache student vs live-teacher student after {steps} steps"
        return f"{what}: largest weight difference {diff:.2e}"

    # ------------------------------------------------------------------ 5. the epoch
    def epochs(self) -> str:
        n = self.args.images
        batch = self.args.batch_size
        dm = self.data(n, batch)
        precision = "bf16-mixed" if self.cuda else "32-true"
        teacher, _ = self.models(big=self.cuda)
        teacher.to(self.device).eval()
        root = self.tmp / "epoch"
        table: list[tuple[str, float, float, str]] = []
        for kind in ("ce", "live teacher", "storing the cache", "warm cache"):
            _, student = self.models(big=self.cuda)
            loss = CELoss() if kind == "ce" else CSKDLoss()
            module = DistillationModule(
                student,
                None if kind == "ce" else teacher,
                loss,
                check_inputs=False,
                channels_last=self.cuda,
            )
            timer = EpochTimer()
            callbacks: list = [timer]
            cache = None
            if kind in ("storing the cache", "warm cache"):
                cache = TeacherLogitCache(root, "epoch")
                callbacks.append(cache)
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            trainer = self.trainer(callbacks, precision=precision)
            trainer.fit(module, datamodule=dm)
            seconds = timer.wall[0]
            images = trainer.num_training_batches * dm.per_process_batch_size
            peak = (
                f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if self.cuda else "n/a (CPU)"
            )
            if kind == "warm cache":
                assert cache.stats["computed"] == 0, cache.stats
            table.append((kind, seconds, images / seconds, peak))
            print(f"  {kind}: {seconds:.2f} s, {images / seconds:.0f} images/s, peak {peak}")
        self.epoch_table = table
        ce, live, _, warm = (row[1] for row in table)
        return (
            f"{n} images, batch {batch}, {precision}: warm cache / ce epoch {warm / ce:.3f}, "
            f"live teacher / ce {live / ce:.3f}, warm / live {warm / live:.3f}"
        )

    # ------------------------------------------------------------------ record
    def record(self, wall: float) -> str:
        head = (
            f"`python {' '.join(sys.argv)}`, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
            f"UTC, {platform.node()}, torch {torch.__version__}, "
            + (torch.cuda.get_device_name() if self.cuda else "CPU smoke run")
            + f"; {wall / 60:.1f} min"
        )
        lines = [head, "", "| check | status | detail |", "|---|---|---|"]
        lines += [f"| {c} | {s} | {d} |" for c, s, d in self.rows]
        if getattr(self, "epoch_table", None):
            lines += [
                "",
                f"One epoch, {self.pair}, {self.args.images} synthetic CIFAR-100 images:",
                "",
                "| epoch | time | images/s | peak memory |",
                "|---|---|---|---|",
            ]
            lines += [f"| {k} | {s:.2f} s | {r:.0f} | {p} |" for k, s, r, p in self.epoch_table]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--images", type=int, default=None, help="images of the epoch check")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", default="gpu_check.md", help="where to write the markdown record")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("No CUDA device: run with --smoke for the CPU smoke run.", file=sys.stderr)
        return 2
    args.images = args.images or (128 if args.smoke else 50_000)
    args.batch_size = args.batch_size or (32 if args.smoke else 128)
    quiet_logs()
    if args.smoke:
        torch.set_num_threads(1)
    check = Check(args)
    started = time.perf_counter()
    check.run("precision bf16-mixed", lambda: check.precision("bf16-mixed"))
    check.run("precision 16-mixed", lambda: check.precision("16-mixed"))
    check.run("channels_last + torch.compile", check.compile_channels_last)
    check.run("device pipeline, no host sync, logit cache", check.sync_and_cache)
    check.run("warm cache = live teacher", check.cache_matches_live)
    check.run("epoch (teacher -> student)", check.epochs)
    text = check.record(time.perf_counter() - started)
    Path(args.out).write_text(text)
    print(text)
    return 1 if any(status == "FAIL" for _, status, _ in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
