"""Outside cskd-train's defaults: the README's data template composes as the methods need (the
real console scripts on the user's paths: tests/integration/test_user_paths_runs.py)."""

from __future__ import annotations

from pathlib import Path

from app_helpers import compose_train
from helpers import REPO

TEMPLATE = REPO / "examples" / "own_data" / "conf" / "data" / "my_data.yaml"


def test_the_data_template_gives_two_views_when_the_method_asks(tmp_path: Path) -> None:
    """The template's optional two_view line, uncommented, follows the method's distill.two_view."""
    template = TEMPLATE.read_text()
    enabled = template.replace("  # two_view: ", "  two_view: ")
    assert enabled != template  # the template has the line
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "my_data.yaml").write_text(enabled)
    for method, two_view in (("cskd_cswt", False), ("cskd_full", True), ("mlkd", True)):
        cfg = compose_train(
            [
                f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
                "data=my_data",
                f"distill={method}",
            ],
            tmp_path,
        )
        assert cfg.data.datamodule.two_view is two_view, method
