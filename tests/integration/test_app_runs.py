"""The Hydra application run for real on digits: ``train()`` writes every output and reuses the
teacher, ``cskd-train`` / ``cskd-eval`` as commands, a multirun with a failing job, bad command
lines, and a non-editable install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from app_helpers import FAST, compose_train, logged, read_summary, run_cli
from helpers import REPO, student_pt_accuracy

from cskd_lightning.app.train import train


def test_train_on_digits_writes_every_output_and_reuses_the_teacher(tmp_path: Path) -> None:
    cfg = compose_train(FAST, tmp_path)
    metrics = train(cfg)
    run = tmp_path / "run"
    summary = read_summary(run)
    assert summary["method"] == "cskd_cswt" and summary["seed"] == 0
    assert summary["teacher"]["test_acc"] > 0.3, "8 real steps on digits beat chance (0.1)"
    assert summary["teacher"]["cached"] is False
    # The student's numbers are its record's: the saved student on the test set, the best
    # validation accuracy logged.
    assert summary["student"]["test_acc"] == pytest.approx(student_pt_accuracy(run / "student.pt"))
    assert summary["student"]["val_acc_best"] == pytest.approx(max(logged(run, "val/acc")))
    for name in ("metrics.csv", "student.pt", "config.yaml", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert metrics["test/acc"] == pytest.approx(summary["student"]["test_acc"])
    # What a sweeper reads: the run's best validation accuracy.
    assert metrics[cfg.optimized_metric] == pytest.approx(summary["student"]["val_acc_best"])
    assert "train/cs_cswt" in (run / "metrics.csv").read_text().splitlines()[0]

    cached = list((tmp_path / "cache" / "teachers").glob("*.pt"))
    assert len(cached) == 1
    again = compose_train([*FAST, "distill=kd"], tmp_path / "second")
    again.paths.cache_dir = str(tmp_path / "cache")
    train(again)
    second = read_summary(tmp_path / "second" / "run")
    assert second["teacher"]["cached"] is True
    assert second["teacher"]["source"] == str(cached[0])
    assert second["teacher"]["test_acc"] == pytest.approx(summary["teacher"]["test_acc"])
    # The teacher's record is the same whichever job trained it: the environment it was trained
    # in, with the thread count this process chose and why.
    assert second["teacher"]["environment"] == summary["teacher"]["environment"]
    assert summary["teacher"]["environment"]["threads"] == summary["environment"]["threads"]
    assert summary["teacher"]["environment"]["threads_source"] != "torch default"


def test_cli_train_then_eval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(
        ["cskd-train", *FAST, f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "student" in done.stdout and "teacher" in done.stdout
    assert (run / ".hydra" / "config.yaml").is_file()
    trained = read_summary(run)["student"]["test_acc"]

    evaluated = run_cli(["cskd-eval", f"run_dir={run}"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(trained, abs=1e-6)


def test_multirun_records_a_failing_job_runs_the_others_and_exits_1(tmp_path: Path) -> None:
    """A job that fails (here its own resume checkpoint is missing: a run directory's check
    that the sweep-wide check, made before any run directory exists, leaves to the job; a bad
    config value is refused before any job trains, tests/integration/test_sweep_check_runs.py)
    is recorded, the others run, and the multirun exits 1; rerun fixed, it runs."""
    sweep = tmp_path / "sweep"
    common = [
        "cskd-train",
        "-m",
        *FAST,
        "distill=cskd",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    missing = tmp_path / "missing.ckpt"
    done = run_cli([*common, f"ckpt_path=null,{missing}"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert read_summary(sweep / "0")["method"] == "cskd"
    error = (sweep / "1" / "error.txt").read_text()
    assert str(missing) in error
    assert not (sweep / "1" / "summary.json").exists()
    output = done.stdout + done.stderr
    assert "1 job(s) of the multirun failed" in output and f"{sweep / '1'}:" in output
    exits = [json.loads((sweep / job / "exit.json").read_text()) for job in ("0", "1")]
    assert [e["status"] for e in exits] == ["ok", "failed"]
    assert str(missing) in exits[1]["error"]
    first = (sweep / "0" / "summary.json").read_bytes()

    # The same sweep directory again, the bad value fixed: job 0 is finished (reported, not
    # redone), job 1 now runs; no failure of the earlier attempt is reported.
    again = run_cli([*common, "ckpt_path=null,null"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "failed" not in again.stdout + again.stderr
    assert (sweep / "0" / "summary.json").read_bytes() == first
    assert "holds this run, finished" in (sweep / "0" / "train.log").read_text()
    assert read_summary(sweep / "1")["overrides"][-1] == "ckpt_path=null"
    assert not (sweep / "1" / "error.txt").exists()
    assert json.loads((sweep / "1" / "exit.json").read_text())["attempt"] != exits[1]["attempt"]
    assert str(missing) in (sweep / "1" / "error.previous.txt").read_text()


def test_unknown_group_option_lists_the_choices(tmp_path: Path) -> None:
    done = run_cli(["cskd-train", "distill=nope"], cwd=tmp_path)
    assert done.returncode != 0
    assert "Could not find 'distill/nope'" in done.stderr
    assert "cskd_cswt" in done.stderr  # the available options are listed


def test_missing_teacher_checkpoint_fails_before_training(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "teacher.ckpt"
    done = run_cli(
        ["cskd-train", f"teacher.ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert f"Checkpoint not found: {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_editable_install_finds_its_configs(tmp_path: Path) -> None:

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import cskd_lightning, importlib.resources as r;"
        "from hydra import compose, initialize_config_module;"
        "initialize_config_module(config_module='cskd_lightning.conf', version_base='1.3');"
        "cfg = compose(config_name='train', overrides=['distill=kd']);"
        "print(cskd_lightning.__file__); print(cfg.distill.loss._target_)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(target) in done.stdout
    assert "cskd_lightning.losses.KDLoss" in done.stdout
