"""Classifier Score Distillation (CSD), as used by PiSA-SR and FiDeSR.

The frozen SD UNet (the generator's UNet with its LoRA adapters disabled) is the teacher. For the
generator's latent ``z`` a noisy ``z_t`` is built at ``t ~ U_int[t_min, t_max)``; one teacher pass on
``[z_t; z_t]`` with ``[negative; tag]`` prompts gives ``eps_neg, eps_pos`` and

    eps_cfg = eps_neg + cfg * (eps_pos - eps_neg)
    real = x0(eps_cfg),  fake = x0(eps_neg),  x0(eps) = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    wf   = mean_chw |z - real| + 1e-6                (per sample)
    grad = (fake - real) / wf
    loss = mean(W * (z - stopgrad(z - grad))^2)      (so d loss / d z = 2 W grad / numel)

The functional core (:func:`csd_loss`, :func:`add_noise`) is separated from the sampling module
(:class:`ClassifierScoreDistillation`), which never holds the teacher: the backbone passes a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fidesr.components.daw import resize_weights
from fidesr.components.distill.base import DistillationTerm, DistillOutput

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "CSDOutput",
    "ClassifierScoreDistillation",
    "Teacher",
    "add_noise",
    "csd_loss",
    "predict_x0",
    "scaled_linear_alphas_cumprod",
    "score_distillation_gradient",
    "score_distillation_loss",
]

#: The fixed negative prompt of the official training script (``--neg_prompt_csd``); "oil painting"
#: really appears twice.
DEFAULT_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, "
    "3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
    "signature, jpeg artifacts, deformed, lowres, over-smooth"
)

#: ``teacher(z_t [2B,C,h,w], t [2B] int64, embeds [2B,L,D]) -> eps [2B,C,h,w]``.
Teacher = Callable[[Tensor, Tensor, Tensor], Tensor]


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """``abar_t`` of SD 2.1's DDPM "scaled_linear" schedule, ``[num_train_timesteps]`` float32.

    ``betas = linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2`` (diffusers' definition). The backbone
    normally passes its scheduler's ``alphas_cumprod``; this is for tests and tiny setups.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _gather(alphas_cumprod: Tensor, timesteps: Tensor, like: Tensor) -> Tensor:
    """``abar[t]`` in ``like``'s dtype/device, shaped ``[B, 1, 1, 1]`` for broadcasting."""
    abar = alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device)]
    return abar.flatten().view(-1, *([1] * (like.dim() - 1)))


def add_noise(latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """DDPM forward process ``sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (== diffusers ``DDPMScheduler.add_noise``).

    Args:
        latents, noise: ``[B, C, h, w]``.
        timesteps: ``[B]`` int64 in ``[0, len(alphas_cumprod))``.
        alphas_cumprod: ``[T]``; cast to ``latents``' dtype as diffusers does.
    """
    abar = _gather(alphas_cumprod, timesteps, latents)
    return abar**0.5 * latents + (1 - abar) ** 0.5 * noise


def predict_x0(noisy_latents: Tensor, eps: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """``x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (the official ``eps_to_mu``). ``[B, C, h, w]``."""
    abar = _gather(alphas_cumprod, timesteps, noisy_latents)
    return (noisy_latents - (1 - abar) ** 0.5 * eps) / abar**0.5


def csd_loss(
    latents: Tensor,
    noisy_latents: Tensor,
    timesteps: Tensor,
    eps_neg: Tensor,
    eps_pos: Tensor,
    alphas_cumprod: Tensor,
    cfg_scale: float = 7.5,
    weight_map: Tensor | None = None,
) -> Tensor:
    """CSD loss whose gradient w.r.t. ``latents`` is the (DAW-weighted) CSD gradient.

    Args:
        latents: generator latent ``z_r`` ``[B, C, h, w]`` (requires grad in training).
        noisy_latents: ``z_t`` built from ``latents`` ``[B, C, h, w]`` (treated as constant).
        timesteps: ``[B]`` int64.
        eps_neg, eps_pos: teacher noise predictions with the negative / tag prompt ``[B, C, h, w]``
            (treated as constant).
        alphas_cumprod: ``[T]`` DDPM schedule.
        cfg_scale: classifier-free guidance scale of the "real" score (7.5).
        weight_map: DAW weights ``[B, 1, H, W]`` (resized bilinearly to ``h x w`` if needed, no
            renormalisation) or None.

    Returns:
        Scalar float32 loss ``mean(W * (z - stopgrad(z - grad))^2)``; its value is ``mean(W grad^2)`` and
        ``d loss / d latents = 2 * W * grad / latents.numel()``.

    The teacher-side terms are computed in float32 without gradient, whatever the teacher's precision.
    """
    z = latents.float()
    with torch.no_grad():
        z_t = noisy_latents.detach().float()
        eps_neg = eps_neg.detach().float()
        eps_cfg = eps_neg + cfg_scale * (eps_pos.detach().float() - eps_neg)
        real = predict_x0(z_t, eps_cfg, timesteps, alphas_cumprod)
        fake = predict_x0(z_t, eps_neg, timesteps, alphas_cumprod)
    return score_distillation_loss(z, real, fake, weight_map, eps=1e-6)


def score_distillation_gradient(latents: Tensor, real: Tensor, fake: Tensor, eps: float = 1e-6) -> Tensor:
    """``(fake - real) / (mean_chw |z - real| + eps)`` per sample: the DMD-style normalised score difference
    both CSD and VSD push the generator latent with. All ``[B, C, h, w]``; no gradient."""
    with torch.no_grad():
        # Per-sample normaliser (as in DMD/PiSA-SR); computed from detached z: it sits inside the
        # stop-gradient in the official code, so its own gradient never contributes.
        wf = (latents.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True) + eps
        return (fake - real) / wf


def score_distillation_loss(
    latents: Tensor, real: Tensor, fake: Tensor, weight_map: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """``mean(W * (z - stopgrad(z - grad))^2)`` with ``grad`` of :func:`score_distillation_gradient`
    (``real`` / ``fake``: the two x0 estimates, ``[B, C, h, w]``); ``d loss / d z = 2 W grad / z.numel()``.
    CSD (``eps=1e-6``, its official code) and VSD (``eps=0``, OSEDiff's) share it."""
    z = latents.float()
    grad = score_distillation_gradient(z, real, fake, eps)
    diff = (z - (z - grad).detach()) ** 2
    if weight_map is None:
        return diff.mean()
    return (resize_weights(weight_map.float(), z.shape[-2:]) * diff).mean()


@dataclass
class CSDOutput:
    """Result of :meth:`ClassifierScoreDistillation.compute`: the loss and what was sampled."""

    loss: Tensor  # scalar float32
    timesteps: Tensor  # [B] int64, the sampled t (for logging)
    noisy_latents: Tensor  # [B, C, h, w] float32 z_t (detached)


def sample_timesteps_and_noise(
    latents: Tensor, t_min: int, t_max: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(t [B] int64 in [t_min, t_max), eps [B, C, h, w] float32)`` on ``latents``' device (CSD, VSD and
    VSD's fake-score update draw their timesteps and noise here).

    With a generator, sampling happens on the generator's device (so a CPU generator works for CUDA
    latents) and is reproducible; without one, the global RNG of ``latents``' device is used.
    """
    b = latents.shape[0]
    dev = generator.device if generator is not None else latents.device
    t = torch.randint(t_min, t_max, (b,), generator=generator, device=dev)
    eps = torch.randn(latents.shape, generator=generator, device=dev, dtype=torch.float32)
    return t.to(latents.device), eps.to(latents.device)


class ClassifierScoreDistillation(DistillationTerm):
    """Samples ``t`` and ``eps``, runs the teacher once on ``[neg; pos]`` and returns :func:`csd_loss`.
    As a :class:`~fidesr.components.distill.base.DistillationTerm` (``distill=csd``): the teacher is the
    backbone's adapters-off UNet, and DAW's weights (when on) weigh the loss in latent space.

    Args:
        cfg_scale: guidance scale of the "real" score (official 7.5).
        t_min, t_max: ``t ~ U_int[t_min, t_max)`` (official 20 and 500 = 0.02 / 0.5 of 1000 steps).
        negative_prompt: text of the negative prompt; the module only stores it (the model encodes it
            once and passes ``neg_embeds``).

    Parameter-free. The teacher callable runs under ``torch.no_grad()`` here, so no graph is built
    through the teacher whatever it does.
    """

    name = "csd"

    def __init__(
        self,
        cfg_scale: float = 7.5,
        t_min: int = 20,
        t_max: int = 500,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
    ) -> None:
        super().__init__()
        if not 0 <= t_min < t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.cfg_scale = float(cfg_scale)
        self.t_min = int(t_min)
        self.t_max = int(t_max)
        self.negative_prompt = negative_prompt

    def extra_repr(self) -> str:
        return f"cfg_scale={self.cfg_scale}, t_min={self.t_min}, t_max={self.t_max}"

    def sample(self, latents: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(t [B] int64, eps [B, C, h, w] float32)`` on ``latents``' device.

        With a generator, sampling happens on the generator's device (so a CPU generator works for CUDA
        latents) and is reproducible; without one, the global RNG of ``latents``' device is used.
        """
        return sample_timesteps_and_noise(latents, self.t_min, self.t_max, generator)

    def compute(
        self,
        latents: Tensor,
        teacher: Teacher,
        pos_embeds: Tensor,
        neg_embeds: Tensor,
        alphas_cumprod: Tensor,
        weight_map: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> CSDOutput:
        """Like :meth:`forward` but also returns the sampled timesteps and ``z_t``."""
        if self.t_max > alphas_cumprod.shape[0]:
            raise ValueError(f"t_max={self.t_max} exceeds the schedule length {alphas_cumprod.shape[0]}")
        b = latents.shape[0]
        pos = pos_embeds.expand(b, -1, -1) if pos_embeds.shape[0] == 1 else pos_embeds
        neg = neg_embeds.expand(b, -1, -1) if neg_embeds.shape[0] == 1 else neg_embeds
        if pos.shape[0] != b or neg.shape[0] != b:
            raise ValueError(
                f"embeddings must have batch 1 or {b}, got {pos_embeds.shape[0]} and {neg_embeds.shape[0]}"
            )
        t, eps = self.sample(latents, generator)
        with torch.no_grad():
            z_t = add_noise(latents.detach().float(), eps, t, alphas_cumprod)
            # One teacher pass on 2B samples: first half negative prompt, second half tag prompt.
            eps_2b = teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([neg, pos]))
            eps_neg, eps_pos = eps_2b.float().chunk(2)
        loss = csd_loss(latents, z_t, t, eps_neg, eps_pos, alphas_cumprod, self.cfg_scale, weight_map)
        return CSDOutput(loss=loss, timesteps=t, noisy_latents=z_t)

    def forward(
        self,
        latents: Tensor,
        teacher: Teacher,
        pos_embeds: Tensor,
        neg_embeds: Tensor,
        alphas_cumprod: Tensor,
        weight_map: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """CSD loss (scalar) for the generator latent.

        Args:
            latents: ``z_r`` ``[B, C, h, w]`` (the generator output latent, with grad).
            teacher: ``teacher(z_t_2B, t_2B, embeds_2B) -> eps_2B``; receives float32 ``z_t`` (cast as
                it needs), is called exactly once, under ``no_grad``.
            pos_embeds: tag-prompt embeddings ``[B or 1, L, D]``.
            neg_embeds: negative-prompt embeddings ``[B or 1, L, D]``.
            alphas_cumprod: ``[T]`` schedule of the teacher's scheduler.
            weight_map: DAW weights ``[B, 1, H, W]`` or None.
            generator: optional RNG for ``t`` and ``eps``.
        """
        return self.compute(
            latents, teacher, pos_embeds, neg_embeds, alphas_cumprod, weight_map, generator
        ).loss

    def training_loss(
        self,
        z_sr: Tensor,
        backbone: Any,
        tags: Sequence[str],
        weight_map: Tensor | None = None,
        generator: torch.Generator | None = None,
        fp16: bool = False,
    ) -> DistillOutput:
        """The term's step (:mod:`fidesr.components.distill.base`): CSD of ``z_sr`` against
        ``backbone.teacher_eps`` with the tag and negative prompts, DAW's ``weight_map`` ``[B,1,H,W]``
        resized to the latent (once, by :func:`score_distillation_loss`)."""
        pos, neg = self.prompt_embeds(backbone, tags)
        loss = self(
            z_sr.float(),
            backbone.teacher_eps,
            pos,
            neg,
            backbone.alphas_cumprod,
            weight_map=weight_map,
            generator=generator,
        )
        return DistillOutput(loss)
