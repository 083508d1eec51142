"""A callback the interrupt test adds to a real ``fidesr-train`` run (imported there via PYTHONPATH)."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class Pace(L.Callback):
    """After ``after`` steps: write ``marker`` (the test then sends the signal) and slow each later step by
    ``sleep`` seconds, so that the signal lands mid-run on a fast or a slow machine alike."""

    def __init__(self, marker: str, after: int = 3, sleep: float = 0.3) -> None:
        self.marker, self.after, self.sleep = Path(marker), after, sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.after:
            self.marker.touch()
            time.sleep(self.sleep)
