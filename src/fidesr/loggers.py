"""Experiment loggers: W&B that works offline, and the guarantee that every job ends its W&B run."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence

from fidesr.errors import disk_full_error, is_disk_full

log = logging.getLogger(__name__)


def wandb_online_possible(timeout: float = 2.0) -> bool:
    """True when W&B credentials exist and its API host answers (no credentials or network -> offline)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return False
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = os.path.expanduser("~/.netrc")
        has_key = os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()
    if not has_key:
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def make_wandb_logger(
    project: str = "fidesr",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    save_dir: str = ".",
    offline: bool | None = None,
    tags: Sequence[str] = (),
    log_model: bool = False,
    job_type: str = "train",
):
    """Lightning's WandbLogger; ``offline=None`` decides from credentials and network.

    Offline runs are written under ``save_dir/wandb`` and uploaded later with ``wandb sync <run dir>``.
    """
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not wandb_online_possible()
    if offline:
        log.info(
            "W&B offline (no credentials or no network): runs go to %s/wandb; upload with `wandb sync`",
            save_dir,
        )
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group,
        name=name,
        save_dir=save_dir,
        offline=offline,
        tags=list(tags),
        log_model=log_model,
        job_type=job_type,
    )


def finish_wandb(exit_code: int = 0) -> None:
    """End the active W&B run, if any (each Hydra multirun job must end its own)."""
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class JobLogFile(logging.FileHandler):
    """The Hydra job's log file (``hydra.job_logging.handlers.file`` of fidesr-train and fidesr-eval).

    On a full disk it says once that the log file stops there (one line naming it) and drops the later
    records, instead of logging's ``--- Logging error ---`` traceback for every record; the run's next write
    of its own reports the full disk as its error. Any other failure is reported as logging does.
    """

    full = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.full:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if exc is None or not is_disk_full(exc):
            super().handleError(record)
            return
        self.full = True
        print(f"warning: {disk_full_error(exc, self.baseFilename)}; the log file stops here", file=sys.stderr)
