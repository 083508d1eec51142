"""What the training module asks of a distillation term (CSD, VSD, the next one).

A distillation term regularises the generator's SR latent with a frozen diffusion prior. The module knows
only this interface; everything a method adds (a fake score, its optimiser, which prompts it encodes,
whether it takes DAW's weights) lives in the term's own file:

* :meth:`DistillationTerm.attach` is called once, when the module is built: the term adds what it needs
  to the backbone (VSD: its fake-score adapter) and remembers how to reach it.
* :meth:`DistillationTerm.training_loss` is called in every training step (where the stage schedule lets
  the term act) with the generator latent ``z_sr`` ``[B, C, h, w]`` (with its graph), the batch's tags,
  DAW's pixel weights ``[B, 1, H, W]`` (None while DAW is off) and the step's generator. It returns the
  term's loss (a scalar whose gradient w.r.t. ``z_sr`` is the term's direction) and its logs; a term with
  its own optimiser takes that optimiser's step here, after its loss.
* :meth:`checkpoint_state` / :meth:`load_checkpoint_state`: the term's own training state (optimiser
  moments, loss scaler) stored under :attr:`state_key` of the checkpoint, for an exact resume.

The module adds ``lambda_distill * loss`` to its loss and logs ``train/loss/<name>`` plus the term's logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["DistillOutput", "DistillationTerm", "PriorBackbone"]


class PriorBackbone(Protocol):
    """The backbone as a distillation term sees it (``StableDiffusionBackbone`` provides all of it)."""

    alphas_cumprod: Tensor  # [T] float32, the DDPM schedule of the frozen prior

    def teacher_eps(self, z_t: Tensor, t: Tensor, prompt_embeds: Tensor) -> Tensor:
        """The frozen prior's noise prediction: ``[N,C,h,w]``, ``[N]`` int64, ``[N,L,D]`` -> ``[N,C,h,w]``."""
        ...

    def encode_prompt(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> text embeddings ``[B, L, D]`` (no grad)."""
        ...


@dataclass
class DistillOutput:
    """One training step of a distillation term."""

    loss: Tensor  # scalar float32: the generator's loss (its gradient reaches z_sr)
    logs: dict[str, Tensor] = field(default_factory=dict)  # detached extras, logged as train/loss/<key>


class DistillationTerm(nn.Module):
    """Base class of a distillation term; subclasses set :attr:`name` and implement :meth:`training_loss`.

    Attributes:
        name: the log key (``train/loss/<name>``) and the term's name in messages.
        state_key: the checkpoint key of the term's own training state (None: it has none).
        negative_prompt: the text of the guidance's negative prompt.
    """

    name: str = "distill"
    state_key: str | None = None
    negative_prompt: str = ""

    def attach(self, backbone: Any) -> None:
        """Add what the term needs to ``backbone`` (called once by the module). Default: nothing."""

    def prompt_embeds(self, backbone: PriorBackbone, tags: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(tag embeddings, negative-prompt embeddings)``, both ``[B, L, D]``."""
        pos = backbone.encode_prompt(tags)
        neg = backbone.encode_prompt([self.negative_prompt] * len(tags))
        return pos, neg

    def training_loss(
        self,
        z_sr: Tensor,
        backbone: Any,
        tags: Sequence[str],
        weight_map: Tensor | None = None,
        generator: torch.Generator | None = None,
        fp16: bool = False,
    ) -> DistillOutput:
        """The term's loss on the generator latent ``z_sr`` ``[B, C, h, w]`` (and its own optimiser step,
        if it has one; ``fp16``: the run scales its losses, so the term's own step should too)."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss")

    def checkpoint_state(self, fp16: bool = False) -> dict | None:
        """The term's own training state for a checkpoint (None: nothing to store)."""
        return None

    def load_checkpoint_state(self, state: dict) -> None:
        """Restore what :meth:`checkpoint_state` returned."""
