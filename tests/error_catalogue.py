"""The catalogue of bad inputs: each one, given to the real ``cskd-train`` on top of an existing,
finished run directory, must end with one ``Error:`` message and exit status 1, and leave the
run directory and the teacher cache byte-identical.

Used by ``tests/integration/test_error_catalogue.py`` (which checks every case) and by
``benchmarks/error_catalogue.py`` (which runs them and writes the table of ``docs/errors.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from app_helpers import run_cli

BASE = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "callbacks.progress_bar=null",
]
"""The settings of the existing run every case is tried against (a few seconds on digits)."""

FMNIST_MISSING = (
    "Fashion-MNIST not found in /nonexistent (looked for train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte [.gz] there and in "
    "/nonexistent/FashionMNIST/raw). Get it with `apt-get install dataset-fashion-mnist` "
    "(Debian; installs into /usr/share/datasets/fashion-mnist) and point data_dir at it, or let "
    "torchvision download it with download=True. (config: data.datamodule.data_dir)"
)
"""The whole message of a missing Fashion-MNIST folder, the config key to fix at its end."""

FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class Workspace:
    """Where the cases run: ``run`` (a finished run), ``cache`` (its teacher cache), ``files``
    (the bad files the cases make) and ``unfinished`` (a run with checkpoints, no summary)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def unfinished(self) -> Path:
        return self.root / "unfinished"


@dataclass
class Case:
    """One bad input: what it is, the overrides (``{files}``, ``{run}``, ... are filled in from
    the :class:`Workspace`), how to make its files, and a part of the expected message."""

    name: str
    what: str
    overrides: list[str]
    expected: str
    make: Callable[[Workspace], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    run_dir: str = "{run}"
    cpu_only: bool = False  # a mistake only where no GPU is (skipped where one is)


class Planted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _models():
    from cskd_lightning.models import create_model

    return create_model


def _teacher_state() -> dict:
    return _models()("digits_teacher", 10, 1).state_dict()


def _write(name: str, content: bytes | str) -> Callable[[Workspace], None]:
    def make(ws: Workspace) -> None:
        path = ws.files / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def _save(name: str, payload: Callable[[Workspace], object]) -> Callable[[Workspace], None]:
    def make(ws: Workspace) -> None:
        torch.save(payload(ws), ws.files / name)

    return make


def _hide_package(name: str) -> Callable[[Workspace], None]:
    """A directory to put first on ``PYTHONPATH`` in which ``import <name>`` fails as it does
    where the package is not installed."""

    def make(ws: Workspace) -> None:
        package = ws.files / f"no_{name}" / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
        )

    return make


def _corrupt_fmnist(ws: Workspace) -> None:
    folder = ws.files / "fmnist"
    folder.mkdir(exist_ok=True)
    for name in FMNIST_FILES:
        (folder / f"{name}.gz").write_bytes(b"not gzip at all")


def _truncated(ws: Workspace) -> None:
    data = (ws.run / "checkpoints" / "last.ckpt").read_bytes()
    (ws.files / "trunc.ckpt").write_bytes(data[: len(data) // 3])


def _training_checkpoint(**extra: object) -> dict:
    return {
        "state_dict": {"w": torch.ones(2)},
        "optimizer_states": [],
        "loops": {},
        "epoch": 0,
        "global_step": 1,
        **extra,
    }


TEACHER = "teacher.ckpt_path={files}/"
# fmt: off
CASES: list[Case] = [
    Case("unknown_model", "unknown model name", ["pair.student.model.name=resnet_nope"],
         "Unknown model 'resnet_nope'. Available:"),
    Case("teacher_classes", "teacher with another class count",
         ["pair.teacher.model.num_classes=5"],
         "the teacher (pair.teacher.model: digits_teacher) = 5"),
    Case("student_classes", "student with another class count",
         ["pair.student.model.num_classes=7"],
         "the student (pair.student.model: digits_student) = 7"),
    Case("data_classes", "`data.num_classes` that is not the dataset's", ["data.num_classes=5"],
         "the datamodule (DigitsDataModule).num_classes = 10"),
    Case("teacher_missing", "teacher checkpoint missing", [TEACHER + "nowhere.pth"],
         "Checkpoint not found: {files}/nowhere.pth"),
    Case("teacher_unknown_format", "teacher checkpoint of an unknown format",
         [TEACHER + "unknown.pth"], "Unknown checkpoint format in {files}/unknown.pth",
         _save("unknown.pth", lambda ws: {"weights": [1, 2, 3], "epoch": 3})),
    Case("teacher_other_architecture", "teacher checkpoint for another architecture",
         [TEACHER + "other.pth"], "The weights in {files}/other.pth do not fit SmallCNN:",
         _save("other.pth", lambda ws: {"model": _models()("digits_student", 10, 1).state_dict()})),
    Case("teacher_pickle", "teacher checkpoint that needs full unpickling (could run code)",
         [TEACHER + "pickle.pth"], "{files}/pickle.pth holds more than weights (arbitrary Python "
         "objects), so it was not loaded: unpickling it could run code. If you trust the file, "
         "pass teacher.trust_checkpoint=true (Python: trust=True).",
         _save("pickle.pth", lambda ws: {"state_dict": _teacher_state(),
                                          "extra": Planted(ws.files / "marker.txt")})),
    Case("teacher_random_bytes", "teacher checkpoint of random bytes", [TEACHER + "random.pth"],
         "{files}/random.pth is not a checkpoint: it is not a PyTorch file",
         _write("random.pth", bytes(range(7, 256)) * 4)),
    Case("teacher_lfs_pointer", "teacher checkpoint that is a Git LFS pointer",
         [TEACHER + "lfs.pth"], "it is a Git LFS pointer, not the file itself: fetch the real "
         "file with `git lfs pull`",
         _write("lfs.pth", "version https://git-lfs.github.com/spec/v1\noid sha256:"
                           + "0" * 64 + "\nsize 123456\n")),
    Case("teacher_html", "teacher checkpoint that is an HTML page", [TEACHER + "page.pth"],
         "it is an HTML/XML page, not a checkpoint: a download that went wrong",
         _write("page.pth", "<!DOCTYPE html>\n<html><body>Sign in</body></html>\n")),
    Case("teacher_yaml", "teacher checkpoint that is a YAML file", [TEACHER + "config.yaml"],
         "{files}/config.yaml is not a checkpoint: it is a text file (it starts with 'seed: 0')",
         _write("config.yaml", "seed: 0\nmodel: digits_teacher\n")),
    Case("teacher_csv", "teacher checkpoint that is a CSV file", [TEACHER + "metrics.csv"],
         "{files}/metrics.csv is not a checkpoint: it is a text file",
         _write("metrics.csv", "epoch,step,val/acc\n0,9,0.5\n")),
    Case("teacher_text", "teacher checkpoint that is a short text file", [TEACHER + "notes.txt"],
         "{files}/notes.txt is not a checkpoint: it is a text file (it starts with '101')",
         _write("notes.txt", "101\n")),
    Case("teacher_empty", "teacher checkpoint that is empty", [TEACHER + "empty.pth"],
         "{files}/empty.pth is not a checkpoint: it is empty (0 bytes)", _write("empty.pth", b"")),
    Case("data_missing", "data directory missing",
         ["data=fashion_mnist", "pair=fashion_mnist", "data.datamodule.data_dir=/nonexistent"],
         FMNIST_MISSING),
    Case("data_corrupt", "data directory corrupt",
         ["data=fashion_mnist", "pair=fashion_mnist", "data.datamodule.data_dir={files}/fmnist"],
         "cannot read Fashion-MNIST file {files}/fmnist/train-images-idx3-ubyte.gz",
         _corrupt_fmnist),
    Case("pairs_data_missing", "data directory missing (the 100-class Fashion-MNIST pairs)",
         ["data=fashion_mnist_pairs", "pair=fashion_mnist_pairs",
          "data.datamodule.data_dir=/nonexistent"],
         FMNIST_MISSING),
    Case("pairs_count", "a pair count that is not a positive integer",
         ["data=fashion_mnist_pairs", "pair=fashion_mnist_pairs",
          "data.datamodule.num_train_pairs=0"],
         "num_train_pairs must be a positive integer, got 0 "
         "(config: data.datamodule.num_train_pairs)"),
    Case("ddp_odd_batch", "batch size not divisible by the process count",
         ["trainer=ddp_sim", "data.datamodule.batch_size=63"],
         "batch_size=63 is the GLOBAL batch and must be divisible by the number of processes (2); "
         "set batch_size to a multiple of 2 (e.g. 62 or 64) or change the number of "
         "devices/nodes. (config: data.datamodule.batch_size)"),
    Case("batch_of_one", "batch size 1 with a batch-level method",
         ["data.datamodule.batch_size=1"],
         "data.datamodule.batch_size=1, but CSKDLoss (distill=cskd_cswt) has batch-level terms"),
    Case("ddp_batch_of_one_per_process", "one sample per process without gathering",
         ["trainer=ddp_sim", "data.datamodule.batch_size=2", "distill.loss.gather=false"],
         "is 1 sample per process and distill.loss.gather=false"),
    Case("t_low_above_t_high", "`t_low > t_high`", ["distill.loss.t_low=7"],
         "t_low (7.0) must not exceed t_high (6.0)"),
    Case("temperature_zero", "non-positive temperature", ["distill.loss.temperature=0"],
         "temperature must be a positive number; got 0.0. (config: distill.loss.temperature)"),
    Case("temperature_not_a_number", "temperature that is not a number",
         ["distill.loss.temperature=abc"],
         "temperature must be a number; got 'abc'. (config: distill.loss.temperature)"),
    Case("negative_weight", "negative weight", ["distill.loss.kd_weight=-1"],
         "kd_weight must be a non-negative number (0 switches it off); got -1.0. "
         "(config: distill.loss.kd_weight)"),
    Case("output_dir_under_a_file", "run directory below a file", [],
         "cannot be written: {files}/afile is a file, not a directory",
         _write("afile", "a file, not a directory"), run_dir="{files}/afile/run"),
    Case("cache_dir_is_a_file", "`CSKD_CACHE_DIR` that is a file", [],
         "The teacher cache {files}/cachefile cannot be used: {files}/cachefile is a file",
         _write("cachefile", "not a directory"), env={"CSKD_CACHE_DIR": "{files}/cachefile"}),
    Case("cache_dir_below_a_file", "`CSKD_CACHE_DIR` below a file", [],
         "is a file, not a directory. Point CSKD_CACHE_DIR",
         _write("cachefile2", "not a directory"), env={"CSKD_CACHE_DIR": "{files}/cachefile2/sub"}),
    Case("resume_other_config", "resuming with a different config",
         ["ckpt_path=last", "distill.loss.temperature=3.0"],
         "it was made with a different config. Differing keys (checkpoint -> now): "
         "distill.loss.temperature: 4.0 -> 3.0"),
    Case("resume_missing", "`ckpt_path` file missing", ["ckpt_path={files}/none.ckpt"],
         "ckpt_path: no checkpoint at {files}/none.ckpt"),
    Case("resume_truncated", "`ckpt_path` file truncated",
         ["ckpt_path={files}/trunc.ckpt"],
         "{files}/trunc.ckpt is truncated or corrupt and could not be read", _truncated),
    Case("resume_weights_only", "`ckpt_path` holds weights only",
         ["ckpt_path={files}/weights.ckpt"],
         "{files}/weights.ckpt holds weights only (no optimizer or loop state)",
         _save("weights.ckpt", lambda ws: {"state_dict": {"w": torch.ones(1)}, "epoch": 1})),
    Case("resume_pickle", "`ckpt_path` needs full unpickling", ["ckpt_path={files}/evil.ckpt"],
         "holds more than weights (arbitrary Python objects), so it was not loaded: unpickling "
         "it could run code. If you trust the file, pass resume_trust_checkpoint=true",
         _save("evil.ckpt",
               lambda ws: _training_checkpoint(extra=Planted(ws.files / "marker.txt")))),
    Case("resume_not_a_checkpoint", "`ckpt_path` that is a YAML file",
         ["ckpt_path={run}/config.yaml"],
         "{run}/config.yaml is not a checkpoint: it is a text file"),
    Case("logit_cache_with_a_dataloader", "teacher-logit cache with a DataLoader datamodule",
         ["teacher.logit_cache=true"],
         "teacher.logit_cache=true needs the device-resident data pipeline"),
    Case("logit_cache_with_a_feature_method", "teacher-logit cache with a feature method",
         ["data=digits_device", "distill=fitnet", "teacher.logit_cache=true"],
         "distill=fitnet needs the teacher's intermediate features"),
    Case("feature_method_without_layers", "feature method on a pair that names no layers",
         ["distill=at", "~pair.features"],
         "distill=at distils intermediate features, but pair=digits_cnn names no feature"),
    Case("logit_cache_dtype", "teacher-logit cache in an unknown precision",
         ["data=digits_device", "teacher.logit_cache=true", "teacher.logit_cache_dtype=float8"],
         "TeacherLogitCache(dtype='float8'): choose one of float32, float16, topk. "
         "(config: teacher.logit_cache_dtype)"),
    Case("logit_cache_topk_every_class", "top-k teacher-logit cache keeping every class",
         ["data=digits_device", "teacher.logit_cache=true", "teacher.logit_cache_dtype=topk",
          "teacher.logit_cache_topk=10"],
         "TeacherLogitCache(topk=10) keeps every class of this data (10 classes): choose "
         "topk < 10, or dtype='float32' (or 'float16') to store all of them. "
         "(config: teacher.logit_cache_topk)"),
    Case("run_dir_other_settings", "an existing run directory, other settings", ["distill=kd"],
         "already holds a run made with other settings (run -> now: "),
    Case("logger_not_installed", "a logger whose package is not installed (`logger=wandb`)",
         ["logger=wandb"],
         'needs the wandb package, which is not installed: pip install "cskd-lightning[wandb]"',
         _hide_package("wandb"), env={"PYTHONPATH": "{files}/no_wandb"}),
    Case("module_not_a_subclass", "`module._target_` that is not a DistillationModule subclass",
         ["module._target_=cskd_lightning.CSKDLoss"],
         "module._target_=cskd_lightning.CSKDLoss is not a DistillationModule subclass"),
    Case("compile_mode_unknown", "`module.compile_models` that is not a torch.compile mode",
         ["module.compile_models=fast"],
         "compile_models must be true, false or a torch.compile mode (default, reduce-overhead, "
         "max-autotune, max-autotune-no-cudagraphs); got 'fast'. (config: module.compile_models)",
         run_dir="{files}/new_run_compile"),
    Case("channels_last_unknown", "`module.channels_last` other than true, false or auto",
         ["module.channels_last=yes"],
         "channels_last must be true, false or auto (on with a GPU); got 'yes'. "
         "(config: module.channels_last)",
         run_dir="{files}/new_run_channels_last"),
    Case("fold_with_features", "`module.fold_teacher_batchnorm=true` with a feature method",
         ["distill=fitnet", "module.fold_teacher_batchnorm=true"],
         "FitNetLoss reads the teacher's features through hooks on its layers, which a folded "
         "copy does not have. Set fold_teacher_batchnorm=False. "
         "(config: module.fold_teacher_batchnorm)",
         run_dir="{files}/new_run_fold"),
    Case("run_dir_unfinished", "an unfinished run directory, without `ckpt_path`", [],
         "holds an unfinished run (config.yaml, no summary.json). Resume it with ckpt_path=last",
         run_dir="{unfinished}"),
    Case("misspelt_added_key", "a misspelt key added with `+` (as Hydra's own advice suggests)",
         ["+distill.loss.temprature=3"],
         "distill.loss.temprature: CSKDLoss takes no argument 'temprature'. Did you mean "
         "distill.loss.temperature?"),
    Case("target_not_importable", "a `_target_` that cannot be imported (own data without "
         "`PYTHONPATH=.`)", ["data.datamodule._target_=my_data.MyDataModule"],
         "data.datamodule._target_=my_data.MyDataModule cannot be imported (No module named "
         "'my_data'). If it is your own code in the current directory, run the command with "
         "PYTHONPATH=. in front"),
    Case("gpu_preset_without_gpu", "a GPU preset on a machine without a GPU "
         "(`experiment=cifar100_standard`)", ["experiment=cifar100_standard",
                                              "pair=resnet56_resnet20"],
         "Add trainer=cpu to the command to train on the CPU", cpu_only=True),
]
# fmt: on


def fill(text: str, ws: Workspace) -> str:
    return text.format(run=ws.run, files=ws.files, cache=ws.cache, unfinished=ws.unfinished)


def snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``roots`` (the directories' entire content)."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[str(path)] = "<dir>"
    return out


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None):
    """Run ``cskd-train`` and capture its output (one thread, as the other CLI tests)."""
    return run_cli(["cskd-train", *args], cwd=cwd, OMP_NUM_THREADS="1", **(env or {}))


def prepare(ws: Workspace) -> None:
    """Train the finished run, copy it into an unfinished one, and make every case's files."""
    ws.files.mkdir(parents=True, exist_ok=True)
    done = cli([*BASE, f"hydra.run.dir={ws.run}", f"paths.cache_dir={ws.cache}"], ws.root)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    import shutil

    shutil.copytree(ws.run, ws.unfinished)
    (ws.unfinished / "summary.json").unlink()
    (ws.unfinished / "student.pt").unlink()
    for case in CASES:
        if case.make is not None:
            case.make(ws)


@dataclass
class Outcome:
    case: Case
    returncode: int
    stderr: str
    message: str


def run_case(case: Case, ws: Workspace) -> Outcome:
    """Run one case; the message is the stderr from ``Error:`` on (a message may go on over a
    few indented lines)."""
    env = {k: fill(v, ws) for k, v in case.env.items()}
    args = [*BASE, f"hydra.run.dir={fill(case.run_dir, ws)}"]
    if "CSKD_CACHE_DIR" not in env:
        args.append(f"paths.cache_dir={ws.cache}")
    args += [fill(o, ws) for o in case.overrides]
    done = cli(args, ws.root, env)
    err = done.stderr
    message = err[err.index("Error: ") :].strip() if "Error: " in err else ""
    return Outcome(case, done.returncode, err, message)
