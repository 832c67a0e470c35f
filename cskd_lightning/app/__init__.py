"""The Hydra application (``cskd-train``, ``cskd-eval``, ``cskd-report``, ``cskd-export``): all
that knows about Hydra, OmegaConf and run directories. The library never imports it."""
