"""Training-time safety: atomic checkpoint files and the count of skipped input images."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fidesr.data.imageio import atomic_write

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place.

    A crash, Ctrl-C or full disk during saving leaves the previous ``last.ckpt`` intact and loadable (the
    rename is atomic on POSIX file systems).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None) -> None:
        with atomic_write(path, fsync=True) as fh:
            torch.save(checkpoint, fh)


class DataHealth(L.Callback):
    """Sums the unreadable training images the dataset skipped (``batch["skipped"]``) and reports them at
    every validation and at the end, so a bad file never kills a run and never passes silently."""

    def __init__(self) -> None:
        self.skipped = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "skipped" in batch:
            self.skipped += int(torch.as_tensor(batch["skipped"]).sum())

    def _report(self, pl_module: L.LightningModule) -> None:
        pl_module.log("data/skipped_images", float(self.skipped), sync_dist=True, reduce_fx="sum")
        if self.skipped:
            log.warning("%d unreadable training images skipped so far (see the warnings naming them)", self.skipped)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._report(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.skipped:
            log.warning("training skipped %d unreadable images in total", self.skipped)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
