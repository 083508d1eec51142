"""The one-step generator shared by training, validation and the inference pipeline.

z_L = E(up(LQ)); r = UNet_LoRA(z_L, t=1); r' = r + LRRB(z_L, r); z_r = z_L - r'; SR = D(z_r).
Keeping it in one function guarantees that what is trained is what is evaluated and shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fidesr.backbone.sd import StableDiffusionBackbone


@dataclass
class OneStepOutput:
    """Latents of one generator call, all [B,C,h,w]."""

    z_lq: torch.Tensor  # z_L, the encoded (upsampled) LQ
    residual: torch.Tensor  # r, the UNet's prediction
    refined_residual: torch.Tensor  # r' = r + LRRB(z_L, r) (== r without LRRB)
    z_sr: torch.Tensor  # z_r = z_L - r' (or the x0 estimate, see StableDiffusionBackbone.prediction)


def one_step(
    backbone: StableDiffusionBackbone,
    lrrb: nn.Module | None,
    z_lq: torch.Tensor,
    prompt_embeds: torch.Tensor,
) -> OneStepOutput:
    """Residual prediction and refinement in latent space (decoding is left to the caller). The residual
    is the backbone's (its active adapters, or their mix under inference-time set strengths)."""
    residual = backbone.residual(z_lq, prompt_embeds)
    refined = residual if lrrb is None else residual + lrrb(z_lq, residual).to(residual.dtype)
    return OneStepOutput(
        z_lq=z_lq, residual=residual, refined_residual=refined, z_sr=backbone.sr_latent(z_lq, refined)
    )
