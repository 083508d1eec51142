"""Training-time safety: atomic checkpoint files, a checkpoint on Ctrl-C / SIGTERM and at the final step,
the count of skipped input images."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fidesr.files import atomic_write
from fidesr.trust import load_torch_file

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place; reads
    checkpoints as data only (``weights_only=True``).

    A crash, Ctrl-C or full disk during saving leaves the previous ``last.ckpt`` intact and loadable (the
    rename is atomic on POSIX file systems).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None
    ) -> None:
        with atomic_write(path, fsync=True) as fh:
            torch.save(checkpoint, fh)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict:
        """Resuming reads the file as data (``weights_only=True``, whatever the caller or the environment
        asks): a checkpoint fidesr wrote holds nothing else, and a planted one runs no code."""
        return load_torch_file(path, "training checkpoint")


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
            log.warning(
                "%d unreadable training images skipped so far (see the warnings naming them)", self.skipped
            )

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


class SaveOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM: finish the current step, save ``last.ckpt``, stop.

    The signal only sets a flag; the checkpoint is written at the end of the step, exactly where the
    periodic checkpoints are written, so ``ckpt_path=last`` resumes it bit-exactly like any other. Under
    DDP the flag is reduced over ranks every step (any rank's signal stops all of them at the same step).
    A second Ctrl-C aborts at once without saving. Handlers are installed for the fit only and restored.

    Args:
        signals: names of the signals to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGINT", "SIGTERM")) -> None:
        self.signals = tuple(signals)
        self.received: str | None = None
        self.saved: Path | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second signal: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"\nfidesr-train: {self.received} received: finishing this step and saving a checkpoint "
            "(Ctrl-C again aborts without saving)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.saved, self.saved_step = None, None, None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        self.received = self.received or "SIGTERM"  # another rank got the signal
        path = self.checkpoint_path(trainer)
        # The full training state (optimizer and loops too: "weights_only" here means leaving those out).
        trainer.save_checkpoint(path, weights_only=False)
        self.saved, self.saved_step = path, trainer.global_step
        if trainer.checkpoint_callback is not None:  # it keeps this last.ckpt instead of writing last-v1.ckpt
            trainer.checkpoint_callback.last_model_path = str(path)
        trainer.should_stop = True

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        """``last.ckpt`` in the checkpoint callback's folder (what ``ckpt_path=last`` reads)."""
        cb = trainer.checkpoint_callback
        folder = (
            Path(cb.dirpath)
            if cb is not None and cb.dirpath
            else Path(trainer.default_root_dir) / "checkpoints"
        )
        return folder / "last.ckpt"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()


class SaveFinalStep(L.Callback):
    """The end of training always writes ``last.ckpt`` at the final step (a run whose ``max_steps`` is not
    a multiple of the checkpoint interval kept its last steps nowhere: export and upscale read an older
    step). Added by ``fidesr-train`` itself, after the configured callbacks.

    At the step that reaches ``max_steps`` between two checkpoint intervals, the checkpoint is written
    where the periodic ones are (end of the step: a resume from it is bit-exact like any other). Any other
    ending whose final step no checkpoint holds (``max_epochs``, ``max_time``, early stopping, a
    validation-driven checkpoint callback that did not save) gets it at the end of training. Nothing is
    written with checkpointing off (``trainer.enable_checkpointing=false``).
    """

    def __init__(self) -> None:
        self.saved_step: int | None = None

    @staticmethod
    def _saved_at(trainer: L.Trainer) -> bool:
        step = trainer.global_step
        cb = trainer.checkpoint_callback
        if cb is not None and cb.save_last and getattr(cb, "_last_global_step_saved", None) == step:
            return True
        return any(isinstance(c, SaveOnInterrupt) and c.saved_step == step for c in trainer.callbacks)

    def _save(self, trainer: L.Trainer) -> None:
        path = SaveOnInterrupt.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, as SaveOnInterrupt
        self.saved_step = trainer.global_step
        if trainer.checkpoint_callback is not None:
            trainer.checkpoint_callback.last_model_path = str(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_step = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step, cb = trainer.global_step, trainer.checkpoint_callback
        if cb is None or trainer.max_steps is None or trainer.max_steps < 0 or step < trainer.max_steps:
            return
        every = int(getattr(cb, "_every_n_train_steps", 0) or 0)
        # On an interval step the checkpoint callback (whose hook runs after this one: Lightning orders
        # checkpoint callbacks last) writes last.ckpt itself, here or after that step's validation; a
        # validation-driven callback (every = 0) saves at the final validation. Either way on_train_end
        # writes it if that did not happen.
        if every > 0 and step % every != 0 and not self._saved_at(trainer):
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.checkpoint_callback is None or trainer.global_step == 0:
            return
        if self.saved_step != trainer.global_step and not self._saved_at(trainer):
            self._save(trainer)
