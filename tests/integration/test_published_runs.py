"""A published CIFAR-100 pair run as a reviewer would check it: a real ``cskd-train -m`` sweep
over two methods with a teacher given by ``teacher.ckpt_path``, on CIFAR-100-format files the
test writes (a few batches, one epoch), then ``cskd-report`` on the sweep. The given teacher is
tested before the students train and compared with its published accuracy, and the report puts
the published numbers beside the sweep's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from app_helpers import run_cli
from helpers import write_cifar

from cskd_lightning.models import create_model

pytestmark = pytest.mark.usefixtures("no_weight_download")

PAIR = "resnet56_resnet20"
# RepDistiller's README, "Benchmark Results on CIFAR-100": the released resnet56 teacher.
TEACHER_PUBLISHED = 72.34
# The published student top-1 of each method on resnet56 -> resnet20 and its source: KD from
# RepDistiller's README (the "KD" row), DKD from mdistiller's README (the "DKD" row).
STUDENT_PUBLISHED = {"kd": (70.66, "CRD"), "dkd": (71.97, "DKD")}
SMOKE = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "pair.student.recipe.max_epochs=1",
    "data.datamodule.batch_size=16",
    "data.datamodule.num_workers=0",
    "callbacks.progress_bar=null",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``<root>/sweep/{0,1}``: distill=kd and distill=dkd; returns the root and the output."""
    root = tmp_path_factory.mktemp("published")
    write_cifar(root / "data", 100, n_train=64, n_test=32)
    teacher = create_model("resnet56", num_classes=100)  # untrained: far below its 72.34%
    torch.save(teacher.state_dict(), root / "resnet56.pt")
    args = [
        "cskd-train",
        "-m",
        "experiment=cifar100_standard",
        f"pair={PAIR}",
        "distill=kd,dkd",
        f"teacher.ckpt_path={root / 'resnet56.pt'}",
        *SMOKE,
        f"paths.data_dir={root / 'data'}",
        f"paths.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={root / 'sweep'}",
    ]
    made = run_cli(args, root)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    return root, made.stdout + made.stderr


def _summaries(root: Path) -> dict[str, dict]:
    found = [json.loads(p.read_text()) for p in (root / "sweep").glob("*/summary.json")]
    return {s["method"]: s for s in found}


def test_a_given_teacher_is_compared_with_its_published_accuracy(sweep) -> None:
    root, output = sweep
    summaries = _summaries(root)
    assert set(summaries) == {"kd", "dkd"}
    for summary in summaries.values():
        teacher = summary["teacher"]
        assert teacher["source"] == str((root / "resnet56.pt").resolve())
        record = teacher["published"]
        gap = round(100 * teacher["test_acc"] - TEACHER_PUBLISHED, 2)
        assert record == {
            "published_acc": TEACHER_PUBLISHED,
            "gap_pts": gap,
            "tolerance_pts": 1.0,
            "within_tolerance": False,
        }
    # one warning per job, on the terminal and in the job's log
    warning = r"published 72\.34% \([+-][\d.]+ points\), more than 1 point from it"
    assert len(re.findall(warning, output)) == 2, output[-3000:]
    for job in ("0", "1"):
        assert re.search(warning, (root / "sweep" / job / "train.log").read_text())


def test_the_report_puts_the_published_numbers_beside_the_sweep(sweep) -> None:
    root, _ = sweep
    made = run_cli(["cskd-report", str(root / "sweep")], root)
    assert made.returncode == 0, made.stderr[-3000:]
    report = (root / "sweep" / "report.md").read_text()
    section = report.split("## Against the published numbers", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0].strip("`"): cells
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"kd", "dkd"}
    summaries = _summaries(root)
    for method, (published, source) in STUDENT_PUBLISHED.items():
        cells = rows[method]
        ours = 100 * summaries[method]["student"]["test_acc"]
        teacher = 100 * summaries[method]["teacher"]["test_acc"]
        assert cells[1] == f"cifar100 ({PAIR})"
        assert cells[2:6] == [f"{ours:.2f}", f"{published:.2f}", f"{ours - published:+.2f}", source]
        assert cells[6:] == [
            f"{teacher:.2f}",
            f"{TEACHER_PUBLISHED:.2f}",
            f"{teacher - TEACHER_PUBLISHED:+.2f}",
        ]
    assert "- CRD: RepDistiller README" in section and "- DKD: mdistiller README" in section
