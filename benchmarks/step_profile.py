"""Count what a GPU would pay for each training step, on the CPU: kernel launches and host syncs.

At the protocol's batch of 64, ``resnet32x4 -> resnet8x4`` is bound by kernel launches, not by
arithmetic (about 0.2 TFLOP per step, 0.2 ms at an H100's bf16 peak, against 5-10 us per
launched kernel), and every op that reads a device value on the host stalls the pipeline. Both
are countable without a GPU: this script runs a real ``Trainer.fit`` (CIFAR-100 files in the
real format, written to a temporary folder, on the device pipeline ``data=cifar100_device``,
``DistillationModule`` with its default options) under a ``TorchDispatchMode`` that sees every
aten op, and reports per training step (the median over the steady-state steps: everything
between the end of one step and the end of the next, the data's augmentation, the teacher,
the student, the loss, backward, the optimizer and Lightning's hooks):

* ``ops``: aten ops dispatched (each is a kernel launch on CUDA, except the views);
* ``launches``: ``ops`` without the views and other metadata-only ops (no kernel on CUDA);
* ``syncs``: ops that make the host wait for the device on CUDA: ``_local_scalar_dense``
  (``.item()``, ``bool(t)``, ``int(t)``), ``nonzero``, ``masked_select``, ``unique``,
  boolean-mask indexing, ``repeat_interleave`` without ``output_size``, ``equal``, a host-made
  tensor (``torch.tensor(...)``: built on the host, then copied to the device), a host copy
  (``.cpu()``, ``.numpy()``, ``.tolist()`` of a tensor, seen by a ``TorchFunctionMode``);
  each sync's source line is listed under the table with ``--where``. Not counted: the class
  range checks inside ``F.one_hot``, which ATen runs on the CPU only.

Rows: every ``distill=`` option; ``views`` 1, or 2 for the two-view methods (and ``--two-view``
adds the one-view methods on two-view data); ``teacher`` live, or ``warm`` (a
teacher-logit cache filled by a first fit, read by the counted one); ``options`` ``default``
or ``compiled`` (``module.compile_models=true``: the dispatch mode does not see inside a
compiled region, so that row counts the ops Dynamo leaves outside the graphs, and its
``breaks`` column the graph breaks from ``torch._dynamo``'s counters).

    python benchmarks/step_profile.py                       # every method, ~15 min on 2 cores
    python benchmarks/step_profile.py --methods cskd_cswt dkd --steps 4 --where

The CPU is only the counting device; nothing here is a time. Where the product picks its
path by the device, the probe takes the accelerator's: ``DistillationModule.defer_checks =
True`` (on an accelerator ``check_inputs`` is read once per epoch) and the strong view's
``batch_rand_augment(sync_free=True)``. ``--monitor`` adds ``callbacks=monitor``'s
``TemperatureMonitor``. See docs/benchmarks/step_profile.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
import os
import pickle
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.profiler
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import cskd_lightning.data.batch_augment as batch_augment
from cskd_lightning import DistillationModule
from cskd_lightning.app.jobs import quiet_logs
from cskd_lightning.callbacks import TemperatureMonitor
from cskd_lightning.data import CIFAR100DataModule, DeviceDataModule
from cskd_lightning.logit_cache import TeacherLogitCache
from cskd_lightning.models import create_model

METHODS = (
    "ce",
    "kd",
    "kd_ls",
    "dkd",
    "dkd_ls",
    "dist",
    "cskd",
    "cskd_cswt",
    "cskd_cswt_ls",
    "cskd_full",
    "mlkd",
)
COMPILED_METHODS = ("kd", "dkd", "cskd", "cskd_cswt")

# Ops that never launch a kernel on CUDA (metadata, aliasing, allocation without a fill).
NO_KERNEL = {
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::_local_scalar_dense",
    "aten::set_",
    "aten::resize_",
    "aten::is_same_size",
    "aten::_has_compatible_shallow_copy_type",
    "aten::sym_size",
    "aten::sym_numel",
    "aten::sym_stride",
    "profiler::_record_function_enter_new",  # Lightning's profiler marks: host-side only
    "profiler::_record_function_exit",
}
SYNC_OPS = {
    "aten::_local_scalar_dense": "item",
    "aten::nonzero": "nonzero",
    "aten::masked_select": "masked_select",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
    "aten::_unique": "unique",
    "aten::_unique2": "unique",
    "aten::unique_dim_consecutive": "unique",
    "aten::equal": "equal",
    "aten::is_nonzero": "item",
    "aten::lift_fresh": "host-made tensor",
}
INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
HOST_READS = {"numpy": "host copy", "tolist": "host copy", "cpu": "host copy"}
OWN_FILES = ("step_profile.py", "torch/", "contextlib.py", "typing.py")


def _where() -> str:
    """The innermost frame of the stack outside torch and this script."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not any(part in frame.filename for part in OWN_FILES):
            name = frame.filename.split("site-packages/")[-1].split("cskd_lightning/")[-1]
            return f"{name}:{frame.lineno} ({frame.name})"
    return "?"


def sync_reason(name: str, args: tuple, kwargs: dict) -> str | None:
    """Why the op ``name`` (``aten::x``, no overload) would make a CUDA host wait, or ``None``."""
    if name in SYNC_OPS:
        return SYNC_OPS[name]
    if name in INDEX_OPS and len(args) > 1:
        indices = args[1] if isinstance(args[1], (list, tuple)) else []
        if any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
        ):
            return "boolean-mask indexing"
    if name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() <= 1:
            return "repeat_interleave"
    if name in ("aten::_to_copy", "aten::copy_"):
        src = args[1] if name == "aten::copy_" else args[0]
        dst = args[0].device if name == "aten::copy_" else kwargs.get("device")
        if isinstance(src, torch.Tensor) and dst is not None and src.device.type != dst.type:
            return "host-device copy"
    return None


class Counter(TorchDispatchMode):
    """Counts every aten op and every host sync (with its source line)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.launches = 0
        self.syncs: collections.Counter[tuple[str, str]] = collections.Counter()
        self.names: collections.Counter[str] = collections.Counter()
        self.phase = "data + hooks"
        self.phases: collections.Counter[str] = collections.Counter()
        self.phase_launches: collections.Counter[tuple[str, str]] = collections.Counter()
        # Inside F.one_hot: ATen checks the class range with two host reads on the CPU only.
        self.cpu_only_checks = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops += 1
        self.names[name] += 1
        self.phases[self.phase] += 1
        if not func.is_view and name not in NO_KERNEL:
            self.launches += 1
            self.phase_launches[(self.phase, name)] += 1
        reason = sync_reason(name, args, kwargs)
        if reason is not None and not self.cpu_only_checks:
            self.syncs[(reason, _where())] += 1
        return func(*args, **kwargs)

    def snapshot(self) -> tuple[int, int, collections.Counter, collections.Counter]:
        return (
            self.ops,
            self.launches,
            collections.Counter(self.syncs),
            collections.Counter(self.names),
            collections.Counter(self.phases),
            collections.Counter(self.phase_launches),
        )


class HostReads(TorchFunctionMode):
    """``.numpy()`` / ``.tolist()`` / ``.cpu()`` of a tensor: on CUDA, a device-to-host copy."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            self.counter.syncs[(HOST_READS[name], _where())] += 1
        if func is torch.nn.functional.one_hot:
            self.counter.cpu_only_checks = True
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.counter.cpu_only_checks = False
        return func(*args, **(kwargs or {}))


class StepWindows(Callback):
    """The counter's totals at the end of every training step, and which part of the step
    each op belongs to (hooks on the teacher, the student and the loss)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.marks: list[tuple] = []

    def _set(self, phase: str) -> Any:
        def hook(*args: Any) -> None:
            self.counter.phase = phase

        return hook

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        for name, part in (("teacher", module.teacher), ("student", module.student)):
            if part is not None:
                part.register_forward_pre_hook(self._set(name))
                part.register_forward_hook(self._set("module"))
        module.loss.register_forward_pre_hook(self._set("loss"))
        module.loss.register_forward_hook(self._set("module"))

    def on_train_batch_start(self, *args: Any) -> None:
        self.counter.phase = "module"

    def on_before_backward(self, *args: Any) -> None:
        self.counter.phase = "backward"

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.counter.phase = "optimizer"

    def on_train_batch_end(self, *args: Any) -> None:
        self.marks.append(self.counter.snapshot())
        self.counter.phase = "data + hooks"

    def per_step(self) -> list[tuple]:
        """One entry per step after the first (the first pays the fit's start)."""
        return [
            tuple(a - b for a, b in zip(after, before, strict=True))
            for before, after in zip(self.marks, self.marks[1:], strict=False)
        ]


class ProfiledStep(Callback):
    """``torch.profiler`` over one training step (end of step ``step - 1`` to end of
    ``step``), for compiled fits: the ops outside the compiled regions and, inside them, the
    extern calls (convolutions, matmuls) and Inductor's fused kernels."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.prof: torch.profiler.profile | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        if i == self.step - 1:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.start()
        elif i == self.step and self.prof is not None:
            self.prof.stop()

    def counts(self) -> tuple[int, int, collections.Counter, collections.Counter]:
        """``(ops, launches, syncs, op names)`` of the profiled step."""
        assert self.prof is not None, "the profiled step did not run"
        ops = launches = 0
        syncs: collections.Counter[tuple[str, str]] = collections.Counter()
        names: collections.Counter[str] = collections.Counter()
        for event in self.prof.events():
            name = event.name
            parent = event.cpu_parent
            top = parent is None or not (
                parent.name.startswith("aten::") or "cpp_fused" in parent.name
            )
            if name in SYNC_OPS or name in ("aten::nonzero",):
                syncs[
                    (SYNC_OPS.get(name, "nonzero"), f"under {parent.name if parent else '-'}")
                ] += 1
            if "cpp_fused" in name or "triton_" in name:
                ops += 1
                launches += 1
                names["inductor kernel"] += 1
            elif name.startswith("aten::") and top:
                ops += 1
                names[name] += 1
                op = getattr(torch.ops.aten, name[6:], None)
                is_view = op is not None and any(
                    getattr(op, o).is_view for o in op.overloads() if hasattr(op, o)
                )
                if not is_view and name not in NO_KERNEL:
                    launches += 1
        return ops, launches, syncs, names


def write_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """CIFAR-100 in its real pickle format (``cifar-100-python/{train,test,meta}``), random."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [i % 100 for i in range(n)]
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": labels,
            "coarse_labels": [y // 5 for y in labels],
            "filenames": [f"{split}_{i}.png" for i in range(n)],
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"g{i}" for i in range(20)],
    }
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)


def method_config(method: str) -> Any:
    """The composed ``distill=<method>`` node of ``cskd-train``'s config."""
    with initialize_config_module(config_module="cskd_lightning.conf", version_base="1.3"):
        return compose("train", overrides=[f"distill={method}"]).distill


def make_trainer(callbacks: list, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="step-profile-"))
        write_cifar100(self.tmp / "data", n_train=64 * (args.steps + 2), n_test=64)
        torch.manual_seed(0)
        self.teacher = create_model("resnet32x4", num_classes=100)
        self.rows: list[dict[str, Any]] = []

    def datamodule(self, two_view: bool) -> DeviceDataModule:
        return DeviceDataModule(
            CIFAR100DataModule(
                data_dir=str(self.tmp / "data"), batch_size=64, two_view=two_view, seed=0
            )
        )

    def module(self, method: str, options: str = "default") -> DistillationModule:
        cfg = method_config(method)
        torch.manual_seed(1)
        student = create_model("resnet8x4", num_classes=100)
        loss = instantiate(cfg.loss)
        teacher = self.teacher if loss.requires_teacher else None
        module = DistillationModule(
            student,
            teacher,
            loss,
            compile_models=options == "compiled",
            fold_teacher_batchnorm=options == "folded",
        )
        module.defer_checks = True  # what the module does on an accelerator
        return module

    def fit(self, method: str, two_view: bool, teacher: str, options: str) -> dict[str, Any]:
        cache_root = self.tmp / f"cache-{method}-{two_view}"
        if teacher == "warm":  # a first fit stores the epoch's teacher logits
            dm, module = self.datamodule(two_view), self.module(method, options)
            make_trainer([TeacherLogitCache(cache_root, "probe")], self.args.steps).fit(
                module, datamodule=dm
            )
        compiled = options == "compiled"
        dm, module = self.datamodule(two_view), self.module(method, options)
        counter = Counter()
        windows = StepWindows(counter)
        callbacks: list = [windows]
        if self.args.monitor:
            callbacks.append(TemperatureMonitor())
        cache = None
        if teacher == "warm":
            cache = TeacherLogitCache(cache_root, "probe")
            callbacks.append(cache)
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        counters.clear()
        trainer = make_trainer(callbacks, self.args.steps)
        started = time.perf_counter()
        if compiled:
            # A dispatch mode on the stack turns compilation off, so the compiled fit is
            # counted with the profiler instead, over one step after Dynamo's warm-up. Inductor's
            # C++ kernels show in the profiler only with its kernel profiling on (a CUDA run's
            # Triton kernels show anyway); without it they were not counted at all.
            import torch._inductor.config as inductor_config

            inductor_config.cpp.enable_kernel_profile = True
            window = ProfiledStep(step=self.args.steps - 2)
            trainer.callbacks.append(window)
            trainer.fit(module, datamodule=dm)
            return self._compiled_row(method, two_view, teacher, counters, window, started)
        with counter, HostReads(counter):
            trainer.fit(module, datamodule=dm)
        if cache is not None:
            assert cache.stats["computed"] == 0, f"warm cache missed: {cache.stats}"
        steps = windows.per_step()
        ops = statistics.median(s[0] for s in steps)
        launches = statistics.median(s[1] for s in steps)
        middle = steps[len(steps) // 2]
        syncs = middle[2]
        return {
            "method": method,
            "views": 2 if two_view else 1,
            "teacher": teacher,
            "options": options,
            "ops": int(ops),
            "launches": int(launches),
            "syncs": sum(syncs.values()),
            "sync_where": dict(syncs),
            "breaks": "",
            "spread": f"{min(s[0] for s in steps)}-{max(s[0] for s in steps)}",
            "top": middle[3].most_common(8),
            "phases": dict(middle[4]),
            "phase_launches": middle[5],
            "seconds": time.perf_counter() - started,
        }

    def _compiled_row(self, method, two_view, teacher, counters, window, started) -> dict[str, Any]:  # noqa: ANN001
        breaks = sum(counters["graph_break"].values())
        ops, launches, syncs, names = window.counts()
        return {
            "method": method,
            "views": 2 if two_view else 1,
            "teacher": teacher,
            "options": "compiled",
            "ops": ops,
            "launches": launches,
            "syncs": sum(syncs.values()),
            "sync_where": dict(syncs),
            "breaks": breaks,
            "spread": "",
            "top": names.most_common(8),
            "phases": {},
            "seconds": time.perf_counter() - started,
        }

    def run(self) -> None:
        for method in self.args.methods:
            cfg = method_config(method)
            two_view_method = bool(cfg.get("two_view", False))
            views = [True] if two_view_method else [False]
            if self.args.two_view and not two_view_method:
                views.append(True)
            needs_teacher = method != "ce"
            for two_view in views if self.args.default else []:
                for teacher in ("live", "warm") if needs_teacher else ("none",):
                    self.report(self.fit(method, two_view, teacher, "default"))
                if self.args.folded and needs_teacher:
                    self.report(self.fit(method, two_view, "live", "folded"))
            if self.args.compiled and method in COMPILED_METHODS:
                self.report(self.fit(method, False, "live", "compiled"))

    def report(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(
            f"  {row['method']:<13} views {row['views']} {row['teacher']:<5} {row['options']:<9}"
            f" ops {row['ops']} launches {row['launches']} syncs {row['syncs']} "
            f"breaks {row['breaks']} ({row['seconds']:.0f} s)",
            flush=True,
        )
        if self.args.where:
            for (reason, where), n in sorted(row["sync_where"].items()):
                print(f"      sync x{n}: {reason} at {where}")
            print(f"      most frequent ops: {row['top']}")
            print(f"      ops by part of the step: {row['phases']}")
            by_part: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            for (part, name), n in row.get("phase_launches", {}).items():
                by_part[part][name.removeprefix("aten::")] += n
            for part, names in by_part.items():
                print(
                    f"      launches in {part}: {sum(names.values())} {dict(names.most_common())}"
                )

    def table(self) -> str:
        lines = [
            "| method | views | teacher | options | ops/step | launches/step | host syncs/step "
            "| graph breaks |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['method']} | {r['views']} | {r['teacher']} | {r['options']} | {r['ops']} "
                f"| {r['launches']} | {r['syncs']} | {r['breaks']} |"
            )
        where: collections.Counter[tuple[str, str]] = collections.Counter()
        for r in self.rows:
            for key in r["sync_where"]:
                where[key] += 1
        if where:
            lines += ["", "Where the syncs are (rows that have them):", ""]
            lines += [f"- {reason}: `{place}` ({n} rows)" for (reason, place), n in where.items()]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=5, help="training steps per fit (>= 4)")
    p.add_argument("--two-view", action="store_true", help="one-view methods on two views too")
    p.add_argument("--no-compiled", dest="compiled", action="store_false")
    p.add_argument("--only-compiled", dest="default", action="store_false")
    p.add_argument("--where", action="store_true", help="print each sync's source line")
    p.add_argument(
        "--folded",
        action="store_true",
        help="also each method's live row with module.fold_teacher_batchnorm=true",
    )
    p.add_argument("--monitor", action="store_true", help="with the TemperatureMonitor")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    if args.steps < 4:
        p.error("--steps must be >= 4 (the first step is not counted)")
    quiet_logs()
    # The strong view's ops as on an accelerator (on the CPU they index the drawn subsets).
    batch_augment.batch_rand_augment = functools.partial(
        batch_augment.batch_rand_augment, sync_free=True
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    probe = Probe(args)
    started = time.perf_counter()
    probe.run()
    text = (
        f"`python {' '.join(sys.argv)}`, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, resnet32x4 -> resnet8x4, batch 64, "
        f"{'TemperatureMonitor, ' if args.monitor else ''}"
        f"{(time.perf_counter() - started) / 60:.1f} min\n\n" + probe.table()
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
