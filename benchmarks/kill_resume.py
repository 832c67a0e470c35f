"""Kill a real ``cskd-train`` run at random moments, resume it, and check the whole record.

One uninterrupted run is the reference. Then, for each of ``--trials`` trials, the same run is
started in its own directory and killed with SIGKILL, **only once a checkpoint exists** (a
loadable ``checkpoints/*.ckpt``: before that there is nothing to resume, and the rerun would be
a fresh start, not a resume), at a random moment of one of three kinds in turn:

* ``random``: after a random delay, uniform between the moment the reference run wrote its
  first checkpoint and its end (training, validation, checkpoint writes, testing); a trial
  whose first checkpoint comes later than the drawn moment is killed as soon as it exists;
* ``checkpoint``: as soon as a checkpoint's temporary file appears after a random epoch from 1
  (a checkpoint being written while an earlier one exists);
* ``validated``: as soon as ``metrics.csv`` holds the validation row of a random epoch from 1
  (the moment between validation and the epoch's end, where the checkpoints are saved).

Each killed run is rerun with ``ckpt_path=last``. A trial counts as a resume only when the
rerun's log says ``Resuming from`` a checkpoint; a run that finished before its kill is not a
resume, is counted apart and is replaced by a new trial (at most ``--trials`` extra draws), so
the record holds ``--trials`` real resumes. Each resume is compared with the reference: the
student's weights (``student.pt`` and ``last.ckpt``), ``metrics.csv`` byte for byte, and
``summary.json`` (best accuracy, best epoch, best checkpoint, every metric). A resume passes
when all are identical.

    python benchmarks/kill_resume.py --trials 20 --out docs/benchmarks/kill_resume.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUN = [
    "pair.teacher.recipe.max_epochs=1",
    "pair.student.recipe.max_epochs=6",
    "pair.student.model.name=digits_teacher",  # a 98k-parameter student: saves take a while
    "+trainer.limit_train_batches=6",
    "trainer.deterministic=true",
    "+data.datamodule.augment=true",
    "callbacks.progress_bar=null",
]
KINDS = ("random", "checkpoint", "validated")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cskd_lightning.app.train",
        *RUN,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache}",
        *extra,
    ]


def state_of(run_dir: Path) -> dict[str, object]:
    """What a finished run is compared on."""
    summary = json.loads((run_dir / "summary.json").read_text())
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {
        "metrics.csv": (run_dir / "metrics.csv").read_bytes(),
        "summary": {"student": summary["student"], "metrics": summary["metrics"]},
        "student.pt": torch.load(run_dir / "student.pt", weights_only=True)["state_dict"],
        "last.ckpt": last,
    }


def differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    out = []
    for key in ("metrics.csv", "summary"):
        if a[key] != b[key]:
            out.append(key)
    for key in ("student.pt", "last.ckpt"):
        x, y = a[key], b[key]
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            out.append(key)
    return out


def last_epoch(run_dir: Path) -> int | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # noqa: BLE001 - absent or being replaced
        return None


def validated_epochs(run_dir: Path) -> set[int]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return set()
    lines = path.read_text().splitlines()
    if not lines:
        return set()
    header = lines[0].split(",")
    if "val/acc" not in header:
        return set()
    col, ep = header.index("val/acc"), header.index("epoch")
    out = set()
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) > col and cells[col]:
            out.add(int(float(cells[ep])))
    return out


def first_checkpoint(run_dir: Path) -> Path | None:
    """A loadable ``checkpoints/*.ckpt`` of ``run_dir`` (one being replaced may fail to load)."""
    ckpts = run_dir / "checkpoints"
    if not ckpts.is_dir():
        return None
    for path in sorted(ckpts.glob("*.ckpt")):
        try:
            torch.load(path, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - being written or replaced
            continue
        return path
    return None


def time_to_first_checkpoint(run_dir: Path, cache: Path) -> tuple[float, float]:
    """Run the reference: seconds until its first checkpoint exists, and until it ends."""
    proc = subprocess.Popen(
        command(run_dir, cache), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = time.monotonic()
    first = None
    while proc.poll() is None:
        if first is None and first_checkpoint(run_dir) is not None:
            first = time.monotonic() - started
        time.sleep(0.01)
    duration = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {proc.returncode})")
    return (first if first is not None else duration), duration


def kill_trial(
    run_dir: Path, cache: Path, kind: str, rng: random.Random, first: float, duration: float
):
    """Start the run and kill it as ``kind`` says, never before a checkpoint exists; return
    what the kill hit."""
    proc = subprocess.Popen(
        command(run_dir, cache), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = time.monotonic()
    target_epoch = rng.randrange(1, 6)
    delay = rng.uniform(first, duration)
    ckpts = run_dir / "checkpoints"
    have_checkpoint = False
    while proc.poll() is None:
        now = time.monotonic() - started
        have_checkpoint = have_checkpoint or first_checkpoint(run_dir) is not None
        if not have_checkpoint:
            time.sleep(0.002)
            continue
        if kind == "random" and now >= delay:
            break
        if kind == "checkpoint" and list(ckpts.glob(".*.tmp")):
            epoch = last_epoch(run_dir)
            if (epoch if epoch is not None else -1) + 1 >= target_epoch:
                break
        if kind == "validated" and target_epoch in validated_epochs(run_dir):
            break
        time.sleep(0.002)
    killed_at = time.monotonic() - started
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return {
        "kind": kind,
        "target": f"{delay:.1f} s" if kind == "random" else f"epoch {target_epoch}",
        "killed_at_s": round(killed_at, 2),
        "finished_before_kill": finished,
        "last_ckpt_epoch": last_epoch(run_dir),
        "checkpoints": sorted(p.name for p in ckpts.glob("*.ckpt")) if ckpts.is_dir() else [],
        "tmp_files": sorted(p.name for p in ckpts.glob(".*.tmp")) if ckpts.is_dir() else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown record here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    rng = random.Random(args.seed)

    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    subprocess.run(command(reference, cache), env=ENV, check=True, capture_output=True)  # teacher
    shutil.rmtree(reference)
    first, duration = time_to_first_checkpoint(reference, cache)
    print(json.dumps({"reference_s": round(duration, 2), "first_checkpoint_s": round(first, 2)}))
    expected = state_of(reference)

    rows, not_killed = [], []
    draws = 0
    while len(rows) < args.trials and draws < 2 * args.trials:
        run_dir = work / f"trial{draws:02d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        kind = KINDS[len(rows) % len(KINDS)]
        hit = kill_trial(run_dir, cache, kind, rng, first, duration)
        draws += 1
        if hit["finished_before_kill"]:
            not_killed.append(hit)
            print(json.dumps({**hit, "counted": "not a resume (finished first)"}), flush=True)
            continue
        resumed = subprocess.run(
            command(run_dir, cache, "ckpt_path=last"), env=ENV, capture_output=True, text=True
        )
        said = [
            ln for ln in (resumed.stdout + resumed.stderr).splitlines() if "Resuming from" in ln
        ]
        hit["resumed_from"] = said[-1].split("Resuming from ")[-1].split(" (")[0] if said else None
        if resumed.returncode != 0:
            diff = [f"resume failed: {resumed.stderr.strip().splitlines()[-1:]}"]
        elif not said:
            diff = ["did not resume (started afresh)"]
        else:
            diff = differences(expected, state_of(run_dir))
        rows.append({**hit, "identical": not diff, "differs": diff})
        print(json.dumps(rows[-1]), flush=True)
        line = summary_line(rows, not_killed)
        if args.out:  # after every trial: an interrupted study keeps what it measured
            write_record(args.out, rows, not_killed, line, first, duration, args.trials)

    line = summary_line(rows, not_killed)
    print(line)
    return 0 if sum(r["identical"] for r in rows) == len(rows) == args.trials else 1


def summary_line(rows: list[dict], not_killed: list[dict]) -> str:
    resumes = sum(r["resumed_from"] is not None for r in rows)
    passed = sum(r["identical"] for r in rows)
    return (
        f"{passed} of {len(rows)} killed runs resumed from a checkpoint and ended bit-identical "
        f"with the whole record ({resumes} resumed; {len(not_killed)} more draws finished "
        "before their kill and are not counted)"
    )


def write_record(
    path: Path,
    rows: list[dict],
    not_killed: list[dict],
    line: str,
    first: float,
    duration: float,
    trials: int,
) -> None:
    kinds = {k: sum(r["kind"] == k for r in rows) for k in KINDS}
    table = [
        "| trial | kill | target | killed at | checkpoints then (last.ckpt epoch) | "
        "pending temp files | resumed from | identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        epoch = "none" if r["last_ckpt_epoch"] is None else str(r["last_ckpt_epoch"])
        ckpts = ", ".join(r["checkpoints"]) + f" ({epoch})"
        ok = "yes" if r["identical"] else "no: " + ", ".join(r["differs"])
        tmp = ", ".join(r["tmp_files"]) or "-"
        source = Path(r["resumed_from"]).name if r["resumed_from"] else "-"
        table.append(
            f"| {i} | {r['kind']} | {r['target']} | {r['killed_at_s']} s | {ckpts} | {tmp} | "
            f"{source} | {ok} |"
        )
    command_line = (
        f"OMP_NUM_THREADS=1 python benchmarks/kill_resume.py --trials {trials} --out {path}"
    )
    text = "\n".join(
        [
            "# Kill and resume: the whole record survives",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} with",
            "",
            "```bash",
            command_line,
            "```",
            "",
            *(
                [f"Interrupted after {len(rows)} of the {trials} trials asked for.", ""]
                if len(rows) < trials
                else []
            ),
            f"**{line}.** Kinds of kill: "
            + ", ".join(f"{n} `{k}`" for k, n in kinds.items())
            + " (see the script's docstring). Every kill came after a loadable checkpoint "
            "existed, and a trial counts as a resume only if the rerun with `ckpt_path=last` "
            "logged `Resuming from` a checkpoint. The uninterrupted reference run took "
            f"{duration:.1f} s, its first checkpoint existed after {first:.1f} s (digits, a "
            "98k-parameter student, 6 epochs of 6 steps, `trainer.deterministic=true`, random "
            "crops on; 2 CPU cores shared with other jobs). Compared after each resume: "
            "`student.pt` and `last.ckpt` weights, `metrics.csv` byte for byte, and "
            "`summary.json`'s student record and metrics.",
            "",
            *table,
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
