"""The command-line application: ``cskd-train``, ``cskd-eval``, ``cskd-report`` and
``cskd-export``, built on Hydra.

Everything that knows about Hydra, OmegaConf, run directories and their records lives here:
the programs, the teacher stage, the checks a run makes before it writes anything, resuming,
and the handling of failed sweep jobs. The library above it (``cskd_lightning``) never imports
this package.
"""
