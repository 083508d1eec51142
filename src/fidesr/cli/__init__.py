"""The ``fidesr-*`` commands. Importing this package is their start-up: it applies the weights rule
(``fidesr.weights.store``) to the process environment once, before torch.hub, pyiqa or
huggingface_hub read it, so that every command uses the same weights directory and caches."""

from collections.abc import Callable
from typing import Any

from fidesr.errors import report_errors
from fidesr.weights.store import apply_environment

apply_environment()


def run_hydra(prog: str, hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` app (``fidesr-train``, ``fidesr-eval``) so that a full disk while Hydra writes
    its own files (``.hydra/config.yaml`` ..., before the task runs and its ``report_errors``) is the same one
    line, ``PROG: error: no space left writing PATH (...)``, instead of Hydra's traceback.

    Hydra has no hook around those writes: its ``_save_config`` is wrapped for the call (when this Hydra
    version has it; tests/cli/test_errors.py pins the result).
    """
    import hydra.core.utils as hydra_utils  # Hydra's commands only; every fidesr-* command imports this package

    save = getattr(hydra_utils, "_save_config", None)
    if save is not None:

        def guarded(*args: Any, **kwargs: Any) -> None:
            report_errors(prog, lambda: save(*args, **kwargs))  # SystemExit(1) passes through Hydra

        hydra_utils._save_config = guarded
    try:
        hydra_main()
    finally:
        if save is not None:
            hydra_utils._save_config = save
