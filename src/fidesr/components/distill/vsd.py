"""Variational Score Distillation (VSD), OSEDiff's regulariser (docs/baselines.md, DESIGN section 7).

Two scores of the generator's latent ``z`` at one noisy ``z_t`` (``t ~ U_int[t_min, t_max)``, official
20 and 980):

* the **real** score: the frozen SD UNet (the backbone's adapters off) with classifier-free guidance on
  ``[negative; tag]`` prompts, ``eps_real = eps_neg + cfg * (eps_pos - eps_neg)``;
* the **fake** score: the same UNet with only the fake-score LoRA adapter
  (:meth:`~fidesr.backbone.sd.StableDiffusionBackbone.fake_eps`) on the tag prompt, no guidance. It models
  the generator's distribution and is trained on the generator's detached latents with the diffusion loss
  ``MSE(eps_fake(z_t', t'), eps')``, ``t' ~ U_int[0, 1000)``, with its own optimiser.

The generator's gradient (OSEDiff's ``distribution_matching_loss``)::

    real = x0(eps_real), fake = x0(eps_fake),  x0(eps) = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    w    = mean_chw |z - real|                 (per sample, no epsilon, as the official code)
    grad = (fake - real) / w
    loss = mean((z - stopgrad(z - grad))^2)    (F.mse_loss: d loss / d z = 2 grad / numel)

The pure core is :func:`vsd_gradient` / :func:`vsd_loss`; :class:`VariationalScoreDistillation` samples and
calls the backbone's two views. It holds no network: the fake score is an adapter on the one UNet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fidesr.components.distill.base import DistillationTerm, DistillOutput
from fidesr.components.distill.csd import (
    DEFAULT_NEGATIVE_PROMPT,
    Teacher,
    add_noise,
    predict_x0,
    sample_timesteps_and_noise,
    score_distillation_gradient,
    score_distillation_loss,
)

__all__ = ["VSDOutput", "VariationalScoreDistillation", "vsd_gradient", "vsd_loss"]


def _x0_pair(
    noisy_latents: Tensor,
    timesteps: Tensor,
    eps_fake: Tensor,
    eps_neg: Tensor,
    eps_pos: Tensor,
    alphas_cumprod: Tensor,
    cfg_scale: float,
) -> tuple[Tensor, Tensor]:
    """(real, fake) x0 estimates in float32, no gradient."""
    with torch.no_grad():
        z_t = noisy_latents.detach().float()
        eps_neg = eps_neg.detach().float()
        eps_real = eps_neg + cfg_scale * (eps_pos.detach().float() - eps_neg)
        real = predict_x0(z_t, eps_real, timesteps, alphas_cumprod)
        fake = predict_x0(z_t, eps_fake.detach().float(), timesteps, alphas_cumprod)
    return real, fake


def vsd_gradient(
    latents: Tensor,
    noisy_latents: Tensor,
    timesteps: Tensor,
    eps_fake: Tensor,
    eps_neg: Tensor,
    eps_pos: Tensor,
    alphas_cumprod: Tensor,
    cfg_scale: float = 7.5,
) -> Tensor:
    """The VSD direction ``(x0_fake - x0_real) / mean_chw |z - x0_real|`` for the generator latent.

    Args:
        latents: generator latent ``z`` ``[B, C, h, w]``.
        noisy_latents: ``z_t`` ``[B, C, h, w]`` built from ``latents`` at ``timesteps`` ``[B]`` (int64).
        eps_fake: the fake score's noise prediction on ``z_t`` (tag prompt) ``[B, C, h, w]``.
        eps_neg, eps_pos: the frozen UNet's noise predictions with the negative / tag prompt.
        alphas_cumprod: ``[T]`` DDPM schedule.
        cfg_scale: guidance scale of the real score (OSEDiff 7.5).

    Returns:
        ``[B, C, h, w]`` float32, no gradient; ``d vsd_loss / d z = 2 * grad / z.numel()``.
    """
    real, fake = _x0_pair(noisy_latents, timesteps, eps_fake, eps_neg, eps_pos, alphas_cumprod, cfg_scale)
    return score_distillation_gradient(latents.float(), real, fake, eps=0.0)


def vsd_loss(
    latents: Tensor,
    noisy_latents: Tensor,
    timesteps: Tensor,
    eps_fake: Tensor,
    eps_neg: Tensor,
    eps_pos: Tensor,
    alphas_cumprod: Tensor,
    cfg_scale: float = 7.5,
) -> Tensor:
    """Scalar float32 ``mean((z - stopgrad(z - grad))^2)`` (value ``mean(grad^2)``) with ``grad`` of
    :func:`vsd_gradient` (same arguments): its gradient w.r.t. ``latents`` is ``2 * grad / numel``."""
    real, fake = _x0_pair(noisy_latents, timesteps, eps_fake, eps_neg, eps_pos, alphas_cumprod, cfg_scale)
    return score_distillation_loss(latents, real, fake, None, eps=0.0)


@dataclass
class VSDOutput:
    """Result of :meth:`VariationalScoreDistillation.compute`."""

    loss: Tensor  # scalar float32, the generator's VSD loss
    timesteps: Tensor  # [B] int64, the sampled t
    noisy_latents: Tensor  # [B, C, h, w] float32 z_t (detached)


#: ``fake(z_t [B,C,h,w], t [B] int64, embeds [B,L,D]) -> eps [B,C,h,w]`` (the backbone's ``fake_eps``).
FakeScore = Callable[[Tensor, Tensor, Tensor], Tensor]


class VariationalScoreDistillation(DistillationTerm):
    """Samples ``t`` and noise, queries the real and fake scores, and trains the fake score.
    As a :class:`~fidesr.components.distill.base.DistillationTerm` (``distill=vsd``): :meth:`attach` adds
    the fake-score adapter to the backbone's UNet, :meth:`training_loss` returns the generator's VSD loss
    and then takes one step of the fake score with the term's own optimiser (state in the checkpoint
    under ``fidesr_fake_score``). DAW's weights are not used (OSEDiff has none).

    Args:
        cfg_scale: guidance scale of the real score (OSEDiff 7.5).
        t_min, t_max: generator-side ``t ~ U_int[t_min, t_max)`` (OSEDiff 20, 980).
        fake_t_min, fake_t_max: fake-score training ``t ~ U_int[fake_t_min, fake_t_max)`` (OSEDiff 0, 1000).
        fake_rank, fake_alpha: LoRA rank / alpha of the fake-score adapter (None: the backbone's).
        fake_modules: ``"mid"`` (default: what OSEDiff's code does; only the mid-block adapter of its
            fake-score UNet is ever active) or ``"all"`` (every generator LoRA module: what it intends).
        optimizer: partial optimiser for the fake-score adapter (OSEDiff: AdamW 5e-5, wd 1e-2).
        grad_clip: max gradient norm of the fake-score step (OSEDiff 1.0; None: no clipping).
        negative_prompt: the real score's negative prompt (the same list as CSD's, OSEDiff's script).

    Parameter-free: the fake score is an adapter on the backbone's UNet, added by :meth:`attach`.
    """

    name = "vsd"
    state_key = "fidesr_fake_score"

    def __init__(
        self,
        cfg_scale: float = 7.5,
        t_min: int = 20,
        t_max: int = 980,
        fake_t_min: int = 0,
        fake_t_max: int = 1000,
        fake_rank: int | None = None,
        fake_alpha: float | None = None,
        fake_modules: str = "mid",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        grad_clip: float | None = 1.0,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
    ) -> None:
        super().__init__()
        for lo, hi, what in ((t_min, t_max, "t"), (fake_t_min, fake_t_max, "fake_t")):
            if not 0 <= lo < hi:
                raise ValueError(f"need 0 <= {what}_min < {what}_max, got {lo}, {hi}")
        if fake_modules not in ("mid", "all"):
            raise ValueError(f"vsd.fake_modules must be 'mid' or 'all', got {fake_modules!r}")
        self.cfg_scale, self.t_min, self.t_max = float(cfg_scale), int(t_min), int(t_max)
        self.fake_t_min, self.fake_t_max = int(fake_t_min), int(fake_t_max)
        self.fake_rank, self.fake_alpha, self.fake_modules = fake_rank, fake_alpha, fake_modules
        self.optimizer_factory = optimizer or (
            lambda params: torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
        )
        self.grad_clip = grad_clip
        self.negative_prompt = negative_prompt
        # The backbone whose fake-score adapter this term trains (kept out of the module tree: it is
        # the model's backbone, not a part of this term), and the fake score's optimiser state.
        self.__dict__["_backbone"] = None
        self._fake_optimizer: torch.optim.Optimizer | None = None
        self._fake_scaler: torch.amp.GradScaler | None = None
        self._fake_state: dict | None = None  # from a checkpoint, until the optimiser exists

    def extra_repr(self) -> str:
        return (
            f"cfg_scale={self.cfg_scale}, t=[{self.t_min}, {self.t_max}), "
            f"fake_t=[{self.fake_t_min}, {self.fake_t_max}), fake_modules={self.fake_modules}"
        )

    def compute(
        self,
        latents: Tensor,
        teacher: Teacher,
        fake_score: FakeScore,
        pos_embeds: Tensor,
        neg_embeds: Tensor,
        alphas_cumprod: Tensor,
        generator: torch.Generator | None = None,
    ) -> VSDOutput:
        """The generator's VSD loss.

        Args:
            latents: ``z`` ``[B, C, h, w]`` with grad (the generator output latent).
            teacher: the frozen UNet (``backbone.teacher_eps``), called once on ``[neg; pos]`` (2B).
            fake_score: the fake score (``backbone.fake_eps``), called once on the tag prompt.
            pos_embeds, neg_embeds: ``[B or 1, L, D]``.
            alphas_cumprod: ``[T]``.
            generator: optional RNG for ``t`` and the noise.
        """
        if self.t_max > alphas_cumprod.shape[0]:
            raise ValueError(f"t_max={self.t_max} exceeds the schedule length {alphas_cumprod.shape[0]}")
        b = latents.shape[0]
        pos = pos_embeds.expand(b, -1, -1) if pos_embeds.shape[0] == 1 else pos_embeds
        neg = neg_embeds.expand(b, -1, -1) if neg_embeds.shape[0] == 1 else neg_embeds
        t, eps = sample_timesteps_and_noise(latents, self.t_min, self.t_max, generator)
        with torch.no_grad():
            z_t = add_noise(latents.detach().float(), eps, t, alphas_cumprod)
            eps_neg, eps_pos = (
                teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([neg, pos])).float().chunk(2)
            )
            eps_fake = fake_score(z_t, t, pos).float()
        loss = vsd_loss(latents, z_t, t, eps_fake, eps_neg, eps_pos, alphas_cumprod, self.cfg_scale)
        return VSDOutput(loss=loss, timesteps=t, noisy_latents=z_t)

    def fake_score_loss(
        self,
        latents: Tensor,
        fake_score: FakeScore,
        pos_embeds: Tensor,
        alphas_cumprod: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The fake score's diffusion loss on the generator's detached latents (OSEDiff's ``diff_loss``):
        ``MSE(fake(sqrt(abar) z + sqrt(1 - abar) eps, t, tags), eps)``, ``t ~ U_int[fake_t_min, fake_t_max)``.
        ``latents`` ``[B, C, h, w]`` (detached here); the graph runs into the fake-score adapter only."""
        z = latents.detach().float()
        b = z.shape[0]
        pos = pos_embeds.expand(b, -1, -1) if pos_embeds.shape[0] == 1 else pos_embeds
        t, eps = sample_timesteps_and_noise(z, self.fake_t_min, self.fake_t_max, generator)
        z_t = add_noise(z, eps, t, alphas_cumprod)
        return F.mse_loss(fake_score(z_t, t, pos).float(), eps)

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The fake score's own optimiser over ``params``."""
        return self.optimizer_factory(params=params)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """:meth:`compute`'s loss."""
        return self.compute(*args, **kwargs).loss

    # ------------------------------------------------------------------ the distillation-term interface
    def attach(self, backbone: Any) -> None:
        """Add the fake-score adapter (rank / alpha: this term's, else the generator LoRA's) to
        ``backbone``'s UNet; this term trains it."""
        backbone.add_fake_score_adapter(
            int(self.fake_rank or backbone.lora_rank),
            float(self.fake_alpha or backbone.lora_alpha),
            self.fake_modules,
        )
        self.__dict__["_backbone"] = backbone

    def training_loss(
        self,
        z_sr: Tensor,
        backbone: Any,
        tags: Sequence[str],
        weight_map: Tensor | None = None,
        generator: torch.Generator | None = None,
        fp16: bool = False,
    ) -> DistillOutput:
        """The generator's VSD loss on ``z_sr`` ``[B, C, h, w]``, then one fake-score step on its
        detached latents (logged as ``vsd_fake_score``); ``weight_map`` is ignored."""
        pos, neg = self.prompt_embeds(backbone, tags)
        loss = self(
            z_sr.float(),
            backbone.teacher_eps,
            backbone.fake_eps,
            pos,
            neg,
            backbone.alphas_cumprod,
            generator=generator,
        )
        fake = self.fake_score_step(z_sr, backbone, pos, generator, fp16)
        return DistillOutput(loss, {"vsd_fake_score": fake})

    def fake_score_step(
        self,
        z_sr: Tensor,
        backbone: Any,
        pos: Tensor,
        generator: torch.Generator | None = None,
        fp16: bool = False,
    ) -> Tensor:
        """One optimiser step of the fake score on the generator's detached latents ``z_sr``
        ``[B,C,h,w]`` (OSEDiff trains it after the generator's step; its loss does not depend on the
        generator's new weights, and the generator's VSD term used the fake score before this step either
        way). Returns the detached diffusion loss."""
        opt, scaler = self._optimizer(fp16)
        params = backbone.fake_score_parameters()
        # The adapter must be active (and require grad) through the backward as well as the forward.
        with backbone.fake_score_active(), torch.enable_grad():
            loss = self.fake_score_loss(z_sr, backbone.fake_eps, pos, backbone.alphas_cumprod, generator)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(z_sr.device.type, enabled=False):
                scaler.scale(loss).backward()
            if self.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def _optimizer(self, fp16: bool) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
        """The fake score's optimiser and fp16 loss scaler, made on first use (state from a checkpoint)."""
        if self._fake_optimizer is None:
            backbone = self.__dict__["_backbone"]
            if backbone is None:
                raise RuntimeError("VariationalScoreDistillation.attach(backbone) was not called")
            params = backbone.fake_score_parameters()
            self._fake_optimizer = self.make_optimizer(params)
            self._fake_scaler = torch.amp.GradScaler(params[0].device.type, enabled=fp16)
            if self._fake_state is not None:
                self._fake_optimizer.load_state_dict(self._fake_state["optimizer"])
                self._fake_scaler.load_state_dict(self._fake_state["scaler"])
                self._fake_state = None
        return self._fake_optimizer, self._fake_scaler

    def checkpoint_state(self, fp16: bool = False) -> dict | None:
        """The fake score's optimiser and loss-scaler state (its LoRA tensors are in the state dict)."""
        opt, scaler = self._optimizer(fp16)
        return {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        """The optimiser is rebuilt from ``state`` on its next use."""
        self._fake_optimizer, self._fake_state = None, state
