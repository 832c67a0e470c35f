"""The short table printed at the end of a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """Teacher and student accuracy, their gap, wall time and where the files are."""
    teacher, student = summary["teacher"], summary["student"]
    t_acc, s_acc = teacher.get("test_acc"), student.get("test_acc")
    table = Table(title=f"{summary['method']} on {summary['data']} (seed {summary['seed']})")
    table.add_column("model")
    table.add_column("", style="dim")
    table.add_column("test acc", justify="right")
    table.add_column("best val acc", justify="right")
    table.add_row("teacher", teacher.get("model", ""), _pct(t_acc), "")
    table.add_row(
        "student", student.get("model", ""), _pct(s_acc), _pct(student.get("val_acc_best"))
    )
    if t_acc is not None and s_acc is not None:
        table.add_row("gap", "student - teacher", f"{100 * (s_acc - t_acc):+.2f} pts", "")
    console = console or Console()
    console.print(table)
    console.print(f"wall time {summary['wall_time_s']:.1f} s; files in {summary['output_dir']}")
    console.print(f"teacher weights: {teacher.get('source')}")
