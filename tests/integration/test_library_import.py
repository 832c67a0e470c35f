"""The library is a library: importing it brings in none of the command-line application
(Hydra, OmegaConf, the app's modules) and changes no global state of its own: no warning
filters and no logger levels beyond what torch and Lightning themselves set when imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, logging, sys, warnings
    import lightning, sklearn, torch, torchmetrics, torchvision  # the dependencies, first
    filters = list(warnings.filters)
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    import cskd_lightning
    import cskd_lightning.callbacks, cskd_lightning.checkpoint_io, cskd_lightning.data
    import cskd_lightning.export, cskd_lightning.logit_cache, cskd_lightning.loggers
    import cskd_lightning.losses, cskd_lightning.models, cskd_lightning.module
    changed = [name for name, level in levels.items()
               if logging.getLogger(name).level != level]
    print(json.dumps({
        "new_filters": [repr(f) for f in warnings.filters if f not in filters],
        "removed_filters": len([f for f in filters if f not in warnings.filters]),
        "changed_levels": changed,
        "app_modules": sorted(m for m in sys.modules
                              if m.split(".")[0] in ("hydra", "omegaconf", "jsonargparse")
                              or m.startswith("cskd_lightning.app")),
    }))
    """
)


def test_importing_the_library_changes_no_global_state_and_no_app_is_loaded() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "new_filters": [],
        "removed_filters": 0,
        "changed_levels": [],
        "app_modules": [],
    }


def _filters_after(statement: str) -> list[str]:
    show = "print(json.dumps(sorted(map(repr, warnings.filters))))"
    code = f"import json, warnings\n{statement}\n{show}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_imported_first_the_library_sets_only_its_dependencies_filters() -> None:
    """In a fresh process, the library and its public names (which import Lightning) leave
    exactly the warning filters that importing its dependencies (Lightning, torchmetrics,
    torchvision) leaves; ``import cskd_lightning`` alone imports none of them, nor torch's
    compiler stack (the names are imported on first use)."""
    names = "; ".join(f"cskd_lightning.{name}" for name in ("DistillationModule", "distill"))
    library = _filters_after(f"import cskd_lightning; {names}; cskd_lightning.load_student")
    dependencies = _filters_after("import lightning, torchmetrics, torchvision")
    assert library == dependencies
    heavy = ("lightning", "torchmetrics", "torchvision", "sympy", "scipy", "torch._inductor")
    probe = f"import sys, cskd_lightning.losses\nprint([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
