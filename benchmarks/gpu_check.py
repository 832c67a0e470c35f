"""One command that checks the GPU paths of cskd-lightning and writes a JSON record.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --steps 3 --out x.json  # dry run on the CPU

The record (``--out``) is rewritten after every check, so a failure or a time limit keeps what
finished. Checks, in order (each a ``checks`` entry: PASS / FAIL / SKIP with what was measured):

0. ``environment``: torch, CUDA, cuDNN, driver and GPU (``nvidia-smi``), Triton, Python.
1. ``triton prerequisites``: Triton importable, a C compiler and Python's headers (what
   Inductor's GPU kernels need); when one is missing the compiled checks are skipped, saying
   why.
2. ``step time``: ``resnet32x4 -> resnet8x4`` (CSKD + CSWT, ``bf16-mixed``, batch 64,
   CIFAR-100-shaped data on the device pipeline), in a real ``trainer.fit``: ms per step after
   warm-up, wall and process CPU time, for the default options, ``fold_teacher_batchnorm=true``
   and ``compile_models=true`` (and ``reduce-overhead``), one and two views, and the 240-epoch
   projection (782 steps per epoch).
3. ``host syncs``: the ops that make the host wait, counted per step over a real
   ``trainer.fit`` (``benchmarks/step_profile.py``'s counter) and, on CUDA, the warnings of
   ``torch.cuda.set_sync_debug_mode("warn")`` per step after the first.
4. ``profiler``: the 12 most expensive ops of 5 steps (``torch.profiler``).
5. ``precision``: a few Lightning training steps in ``bf16-mixed`` and ``16-mixed``: the
   logits are in the low precision, every loss term is float32.
6. ``channels_last + torch.compile``: finite loss, weights in channels-last format.
7. ``logit cache``: storing and reading on CUDA with every step after an epoch's first under
   ``torch.cuda.set_sync_debug_mode("error")``; the warm-cache student equals the
   live-teacher student.
8. ``epoch``: one epoch of ``resnet32x4 -> resnet8x4`` on 50000 synthetic CIFAR-100 images:
   ``ce``, live teacher, storing and warm cache (time, images/s, peak memory).

``--device cpu`` is the dry run: the same code on the CPU with ``--steps`` steps, small CNNs
instead of the ResNets (except in ``step time`` and ``host syncs``), ``torch.compile`` with
``backend="eager"`` (Dynamo's capture without Inductor's build), and no 16-mixed, sync debug
mode or memory figures (CUDA only; the record says so). ``--smoke`` is ``--device cpu --steps
3`` with 128 images. The test suite runs the dry run so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from step_profile import Counter, HostReads, StepWindows
from synthetic import EpochTimer, SyntheticCIFAR, plain_trainer

from cskd_lightning import CELoss, CSKDFullLoss, CSKDLoss, DistillationModule
from cskd_lightning.app.jobs import quiet_logs
from cskd_lightning.data import DeviceDataModule
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.models import create_model

Row = tuple[str, str, str]  # (check, status, detail)
STEPS_PER_EPOCH = 50_000 // 64  # CIFAR-100's training set at the protocol's batch
EPOCHS = 240


class StepClock(Callback):
    """Wall and process CPU time from the start of step ``warmup`` to the end of the epoch
    (the device synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: tuple[float, float] | None = None
        self.wall = self.cpu = 0.0
        self.steps = 0

    def _now(self, module: L.LightningModule) -> tuple[float, float]:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter(), time.process_time()

    def on_train_batch_start(self, trainer, module, batch, i) -> None:  # noqa: ANN001
        if i == self.warmup:
            self.start = self._now(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, i) -> None:  # noqa: ANN001
        self.steps = i + 1 - self.warmup

    def on_train_epoch_end(self, trainer, module) -> None:  # noqa: ANN001
        assert self.start is not None, "no step after the warm-up"
        wall, cpu = self._now(module)
        self.wall, self.cpu = wall - self.start[0], cpu - self.start[1]


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
        self.cuda = args.device == "cuda"
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.record_data: dict[str, Any] = {
            "command": "python " + " ".join(sys.argv),
            "started": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "device": args.device,
            "checks": [],
        }
        self.compile_skip: str | None = None
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
        entry = {"check": name, "status": status, "detail": detail, "seconds": round(took, 1)}
        entry.update(self.results.pop(name, {}))
        self.record_data["checks"].append(entry)
        self.write()

    results: dict[str, dict[str, Any]] = {}

    def write(self) -> None:
        """The record so far, to ``--out`` (rewritten whole after every check)."""
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(self.record_data, indent=2, default=str) + "\n")
        os.replace(tmp, out)

    # ------------------------------------------------------------------ 0. environment
    def environment(self) -> str:
        env: dict[str, Any] = {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "python": platform.python_version(),
            "host": platform.node(),
            "lightning": L.__version__,
        }
        if importlib.util.find_spec("triton") is not None:
            import triton

            env["triton"] = triton.__version__
        if self.cuda:
            env["gpu"] = torch.cuda.get_device_name()
            env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
            done = subprocess.run(query, capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
        self.record_data["environment"] = env
        return ", ".join(f"{k} {v}" for k, v in env.items() if v is not None)

    # ------------------------------------------------------------------ 1. triton
    def triton_prerequisites(self) -> str:
        missing = []
        if importlib.util.find_spec("triton") is None:
            missing.append("the triton package")
        if not any(shutil.which(cc) for cc in (os.environ.get("CC", "gcc"), "gcc", "cc", "clang")):
            missing.append("a C compiler (gcc/cc/clang)")
        if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
            missing.append("Python's headers (Python.h: apt-get install python3-dev)")
        if not self.cuda:
            self.compile_skip = None  # the dry run compiles with backend="eager"
            what = ", ".join(missing) or "nothing"
            return f"skipped: Triton's kernels are CUDA only (missing here: {what})"
        if missing:
            self.compile_skip = "missing " + ", ".join(missing)
            return f"skipped: compiled checks off, {self.compile_skip}"
        return "triton, a C compiler and Python.h present"

    def _compile_patch(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return contextlib.nullcontext()
        return mock.patch.object(
            torch, "compile", functools.partial(torch.compile, backend="eager")
        )

    def _pair(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(teacher, student): the protocol's ResNets on CUDA, small CNNs in the dry run."""
        return self.models(big=self.cuda)

    # ------------------------------------------------------------------ 2. step time
    def _timed_fit(
        self, two_view: bool, compile_models: bool | str, fold: bool = False
    ) -> dict[str, float]:
        warmup = 10 if self.cuda else 1
        steps = warmup + self.args.steps
        teacher, student = self._pair()
        module = DistillationModule(
            student,
            teacher,
            CSKDFullLoss() if two_view else CSKDLoss(),
            channels_last=self.cuda,
            compile_models=compile_models,
            fold_teacher_batchnorm=fold,
        )
        clock = StepClock(warmup)
        dm = self.data(64 * steps, 64, two_view=two_view)
        precision = "bf16-mixed" if self.cuda else "32-true"
        with self._compile_patch():
            self.trainer([clock], precision=precision, limit_train_batches=steps).fit(
                module, datamodule=dm
            )
        ms = 1000 * clock.wall / clock.steps
        return {
            "ms_per_step": round(ms, 3),
            "cpu_ms_per_step": round(1000 * clock.cpu / clock.steps, 3),
            "steps_timed": clock.steps,
            "minutes_240_epochs": round(ms * STEPS_PER_EPOCH * EPOCHS / 60_000, 2),
        }

    def step_time(self) -> str:
        table: dict[str, Any] = {}
        options: list[tuple[str, bool | str, bool]] = [
            ("default", False, False),
            ("folded teacher", False, True),
        ]
        if self.compile_skip is None:
            options += [("compiled", True, False)]
            if self.cuda:
                options += [("reduce-overhead", "reduce-overhead", False)]
        for views in (1, 2):
            for label, value, fold in options:
                key = f"{label}, {views} view{'s' if views > 1 else ''}"
                try:
                    table[key] = self._timed_fit(views == 2, value, fold)
                except Exception as err:  # noqa: BLE001 - one failed option is a row
                    table[key] = {"error": f"{type(err).__name__}: {err}"[:300]}
                print(f"  {key}: {table[key]}", flush=True)
                self.results["step time"] = {"steps": table}
                self.write()
        first = table["default, 1 view"]
        skipped = f"; compiled skipped ({self.compile_skip})" if self.compile_skip else ""
        return (
            f"batch 64, default options, 1 view: {first.get('ms_per_step')} ms/step "
            f"(CPU {first.get('cpu_ms_per_step')} ms), 240 epochs "
            f"{first.get('minutes_240_epochs')} min{skipped}"
        )

    # ------------------------------------------------------------------ 3. host syncs
    def host_syncs(self) -> str:
        teacher, student = self._pair()
        module = DistillationModule(student, teacher, CSKDLoss(), channels_last=self.cuda)
        if not self.cuda:
            module.defer_checks = True  # check_inputs as on a GPU (read once per epoch)
        steps = max(self.args.steps, 3) + 1
        counter = Counter()
        windows = StepWindows(counter)
        warned: list[int] = []

        class PerStepWarnings(Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                warned.append(len(caught))

        dm = self.data(64 * steps, 64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if self.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                with counter, HostReads(counter):
                    self.trainer([windows, PerStepWarnings()], limit_train_batches=steps).fit(
                        module, datamodule=dm
                    )
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        per_step = windows.per_step()[:-1]  # the last step reads the epoch's checks
        counted = [sum(s[2].values()) for s in per_step]
        debug = [b - a for a, b in zip(warned, warned[1:], strict=False)][:-1]
        self.results["host syncs"] = {
            "counted_per_step": counted,
            "where": [f"{r} at {w}" for s in per_step for (r, w) in s[2]],
            "cuda_sync_debug_warnings_per_step": debug if self.cuda else None,
            "ops_per_step": [s[0] for s in per_step],
        }
        assert not any(counted), self.results["host syncs"]["where"]
        if self.cuda:
            assert not any(debug), debug
        mode = f", sync debug mode {debug}" if self.cuda else ", sync debug mode: CUDA only"
        return f"steps 2..{steps - 1}: counted {counted}{mode}; ops/step {per_step[0][0]}"

    # ------------------------------------------------------------------ 4. profiler
    def profiler_summary(self) -> str:
        teacher, student = self._pair()
        module = DistillationModule(student, teacher, CSKDLoss(), channels_last=self.cuda)
        steps = max(self.args.steps, 3)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        dm = self.data(64 * (steps + 1), 64)
        with torch.profiler.profile(activities=activities) as prof:
            self.trainer([], limit_train_batches=steps + 1).fit(module, datamodule=dm)
        sort = "cuda_time_total" if self.cuda else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=12)
        self.results["profiler"] = {"table": table.splitlines()}
        print(table)
        return f"{steps + 1} steps, top 12 ops by {sort} in the record"

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
        if self.compile_skip:
            return f"skipped: {self.compile_skip}"
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
        assert student._compiled_call_impl is not None  # nn.Module.compile
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
        self.record_data["minutes"] = round(wall / 60, 2)
        if getattr(self, "epoch_table", None):
            self.record_data["epoch_table"] = [
                {"epoch": k, "seconds": s, "images_per_s": r, "peak": p}
                for k, s, r, p in self.epoch_table
            ]
        self.write()
        head = (
            f"`python {' '.join(sys.argv)}`, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
            f"UTC, {platform.node()}, torch {torch.__version__}, "
            + (torch.cuda.get_device_name() if self.cuda else "CPU dry run")
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
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--steps", type=int, default=None, help="timed steps (after the warm-up)")
    p.add_argument("--smoke", action="store_true", help="--device cpu --steps 3, 128 images")
    p.add_argument("--images", type=int, default=None, help="images of the epoch check")
    p.add_argument("--batch-size", type=int, default=None, help="batch of the epoch check")
    p.add_argument("--out", default="gpu_check.json", help="the JSON record (after each check)")
    args = p.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.steps = args.steps or 3
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: --device cpu is the dry run.", file=sys.stderr)
        return 2
    dry = args.device == "cpu"
    args.steps = args.steps or (3 if dry else 50)
    args.images = args.images or (128 if dry else 50_000)
    args.batch_size = args.batch_size or (32 if dry else 128)
    args.smoke = dry  # the small sizes of the checks below
    quiet_logs()
    if dry:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    check = Check(args)
    started = time.perf_counter()
    check.run("environment", check.environment)
    check.run("triton prerequisites", check.triton_prerequisites)
    check.run("step time", check.step_time)
    check.run("host syncs", check.host_syncs)
    check.run("profiler", check.profiler_summary)
    check.run("precision bf16-mixed", lambda: check.precision("bf16-mixed"))
    check.run("precision 16-mixed", lambda: check.precision("16-mixed"))
    check.run("channels_last + torch.compile", check.compile_channels_last)
    check.run("device pipeline, no host sync, logit cache", check.sync_and_cache)
    check.run("warm cache = live teacher", check.cache_matches_live)
    check.run("epoch (teacher -> student)", check.epochs)
    text = check.record(time.perf_counter() - started)
    print(text)
    return 1 if any(status == "FAIL" for _, status, _ in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
