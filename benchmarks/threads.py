"""The default ``cskd-train`` under three thread settings, on this machine as it is and with two
extra CPU-bound processes: how much oversubscribed threads cost and what the default chooses.

    python benchmarks/threads.py [--repeats 1] [--load 2] [--skip-oversubscribed-loaded]

Each run is the whole default command (teacher trained into a fresh cache, then the student),
in a fresh directory. Settings: ``default`` (nothing set: cskd-train chooses), ``OMP=1``
(``OMP_NUM_THREADS=1``) and ``threads=<cores>`` (PyTorch's own default of one thread per usable
core, what cskd-train did before it chose). Conditions: ``as is`` (whatever else runs on the
machine: the load average is printed) and ``+N spinners`` (N extra processes that spin a core
each). Prints the wall times and the ratios to ``OMP=1`` in the same condition.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spin() -> None:
    while True:
        pass


def run_train(extra: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of one default ``cskd-train`` in a fresh directory; the threads line it logged."""
    with tempfile.TemporaryDirectory() as tmp:
        full_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        full_env.update(env, CSKD_CACHE_DIR=str(Path(tmp) / "cache"))
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cskd_lightning.app.train",
                "callbacks.progress_bar=null",
                *extra,
            ],
            cwd=tmp,
            env=full_env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        output = (done.stdout + done.stderr).splitlines()
        line = next((ln for ln in output if "CPU threads:" in ln), "")
        return wall, line.split("] ", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--load", type=int, default=2, help="extra CPU-bound processes")
    parser.add_argument(
        "--skip-oversubscribed-loaded",
        action="store_true",
        help="leave out threads=<cores> under load (the slowest run by far)",
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = {
        "default": ([], {}),
        "OMP=1": ([], {"OMP_NUM_THREADS": "1"}),
        f"threads={cores}": ([f"threads={cores}"], {}),
    }
    print(f"{cores} usable cores; load average at start {os.getloadavg()}")
    results: dict[tuple[str, str], list[float]] = {}
    for condition in ("as is", f"+{args.load} spinners"):
        spinners = []
        if condition != "as is":
            spinners = [mp.Process(target=spin, daemon=True) for _ in range(args.load)]
            for proc in spinners:
                proc.start()
            time.sleep(5)
        try:
            for _ in range(args.repeats):
                for name, (extra, env) in settings.items():
                    if (
                        condition != "as is"
                        and name.startswith("threads=")
                        and (args.skip_oversubscribed_loaded)
                    ):
                        continue
                    load = os.getloadavg()[0]
                    wall, line = run_train(extra, env)
                    results.setdefault((condition, name), []).append(wall)
                    print(f"{condition:12s} {name:10s} {wall:7.1f} s  (load {load:.1f}) {line}")
                    sys.stdout.flush()
        finally:
            for proc in spinners:
                proc.terminate()
    print("\ncondition    setting    mean wall s   / OMP=1")
    for (condition, name), walls in results.items():
        mean = sum(walls) / len(walls)
        base = results.get((condition, "OMP=1"))
        ratio = mean / (sum(base) / len(base)) if base else float("nan")
        print(f"{condition:12s} {name:10s} {mean:10.1f}   {ratio:6.2f}x")


if __name__ == "__main__":
    main()
