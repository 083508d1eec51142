"""An exponential moving average of the trained generator weights (LoRA, VAE-encoder LoRA, LRRB).

As BasicSR's ``net_g_ema`` / traiNNer-redux / neosr: after every optimiser step
``ema = d * ema + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))`` during the warm-up (``n`` the
updates so far; the averaging window grows with the run, so early random weights do not linger), else
``d = decay``. Validation runs on the averaged weights (``validate_with_ema``), the training itself never
sees them: the raw run is unchanged, bit for bit, with or without this callback.

Checkpoints carry the average under ``checkpoint["fidesr_ema"]`` (``state_dict`` keyed like the
checkpoint's own, ``updates``, ``decay``), so a resume continues it exactly, and the model readers
(:meth:`fidesr.modelio.read.TrainedWeights.load`: ``fidesr-upscale``, ``fidesr-export``, ``fidesr-eval``)
use it when present. Select with ``ema=on`` (``callbacks.ema.decay=0.999``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from fidesr.backbone.lora import FAKE_SCORE_ADAPTER
from fidesr.modelio.layout import EMA_KEY

__all__ = ["WeightEMA", "generator_tensor_names"]


def generator_tensor_names(module: Any) -> list[str]:
    """The module's trained generator tensors (checkpoint names): every trainable tensor but the
    training-only ones (a distillation term's fake score)."""
    return sorted(k for k in module.trainable_state_keys() if f".{FAKE_SCORE_ADAPTER}." not in k)


class WeightEMA(L.Callback):
    """EMA of the generator's trained tensors.

    Args:
        decay: the average's decay per optimiser step (0.999: a window of about 1000 steps).
        warmup: ``d = min(decay, (1 + n) / (10 + n))`` for the ``n``-th update (TensorFlow's rule).
        validate_with_ema: swap the average in for validation (and back after it).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, validate_with_ema: bool = True) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.validate_with_ema = float(decay), bool(warmup), bool(validate_with_ema)
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._raw: dict[str, torch.Tensor] | None = None
        self._targets: dict[str, torch.Tensor] = {}  # name -> parameter, found once at fit start

    def decay_at(self, n: int) -> float:
        """The decay of the ``n``-th update (0-based)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # The parameters are found once (the module is on its device by now), not in every step.
        named = dict(module.named_parameters())
        self._targets = params = {k: named[k] for k in generator_tensor_names(module) if k in named}
        if self.shadow is None:
            self.shadow = {k: p.detach().float().clone() for k, p in params.items()}
        else:  # resumed: the stored average, on this run's device
            self.shadow = {k: v.to(params[k].device) for k, v in self.shadow.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self.shadow is None:
            return
        weight = 1.0 - self.decay_at(self.updates)
        for k, p in self._targets.items():
            self.shadow[k].lerp_(p.detach().float(), weight)
        self.updates += 1

    @torch.no_grad()
    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.validate_with_ema or self.shadow is None or self._raw is not None or not self._targets:
            return
        self._raw = {k: p.detach().clone() for k, p in self._targets.items()}
        for k, p in self._targets.items():
            p.copy_(self.shadow[k].to(p.dtype))

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Before ModelCheckpoint's on_validation_end: checkpoints always hold the raw weights.
        if self._raw is None:
            return
        for k, p in self._targets.items():
            p.copy_(self._raw[k])
        self._raw = None

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if self.shadow is not None:
            checkpoint[EMA_KEY] = {
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.shadow.items()},
                "updates": self.updates,
                "decay": self.decay,
            }

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        stored = checkpoint.get(EMA_KEY)
        if stored is None:  # EMA switched on at resume: it starts from the resumed weights
            return
        self.shadow = {k: torch.as_tensor(v).float() for k, v in stored["state_dict"].items()}
        self.updates = int(stored.get("updates", 0))
