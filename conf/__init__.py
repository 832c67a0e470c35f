"""The Hydra configs of the application (installed as ``cskd_lightning.conf``).

Hydra imports this package to read them, which registers the resolver they use for the
default teacher cache: ``${cskd_user_cache:}``, the platform's per-user cache directory for
this package (``~/.cache/cskd-lightning`` on Linux, following ``XDG_CACHE_HOME``;
``~/Library/Caches/cskd-lightning`` on macOS; ``%LOCALAPPDATA%\\cskd-lightning\\Cache`` on
Windows), as ``platformdirs`` gives it.
"""

from omegaconf import OmegaConf


def user_cache_dir() -> str:
    """The per-user cache directory of cskd-lightning (created when first written to)."""
    import platformdirs

    return platformdirs.user_cache_dir("cskd-lightning", appauthor=False)


OmegaConf.register_new_resolver("cskd_user_cache", user_cache_dir, replace=True)
