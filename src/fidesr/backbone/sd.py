"""The Stable Diffusion adapter: everything fidesr asks of SD 2.1-base, behind one small interface.

Frozen: VAE, text encoder, UNet base weights. Trained: the UNet's LoRA adapters, which, with the frozen-
prior views (the CSD teacher is the same UNet with its adapters disabled, so no second UNet copy is held in
memory), live in :mod:`.adapters`; where the base model comes from is :mod:`.hub`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from fidesr.backbone.adapters import AdapterMixin
from fidesr.backbone.hub import DEFAULT_PRETRAINED, load_components
from fidesr.backbone.lora import LORA_SETS, LORA_TARGETS
from fidesr.devices import resolve_dtype

ONE_STEP_TIMESTEP = 1  # the UNet is called once at t = 1 (OSEDiff / PiSA-SR / FiDeSR)


class StableDiffusionBackbone(AdapterMixin, nn.Module):
    """SD UNet + VAE + text encoder with LoRA, for one-step SR.

    Args:
        unet, vae, text_encoder, tokenizer, scheduler: diffusers / transformers components.
        lora_rank, lora_alpha, lora_init, lora_targets: the LoRA setup (rank 8, alpha 8, gaussian init and
            the official target patterns by default). ``lora_rank=0`` disables LoRA (frozen UNet).
        gradient_checkpointing: trade compute for memory in the UNet (training on 24 GB cards).
        timestep: the UNet's timestep for the one-step call (1 for FiDeSR / PiSA-SR; 999 for OSEDiff).
        prediction: how the UNet output becomes the SR latent: ``"residual"`` (z_r = z_L - r, FiDeSR /
            PiSA-SR) or ``"x0"`` (the DDPM x0 estimate at ``timestep``, OSEDiff).
        frozen_dtype: dtype of the frozen VAE, text encoder and UNet base weights (``None`` keeps
            float32; ``"float16"``/``"bfloat16"`` halve their memory; LoRA weights stay float32). Use it
            with mixed precision (``trainer.precision=16-mixed`` or ``bf16-mixed``), which autocasts.
        lora_sets: ``None`` (one LoRA set: FiDeSR, OSEDiff) or PiSA-SR's ``["pix", "sem"]``: two sets of the
            three adapters on the same modules (``default_encoder_pix``, ..., ``default_others_sem``), all
            active after construction (the merged model); see :meth:`set_lora_sets` and
            :meth:`mixed_residual`.
        vae_lora_rank: OSEDiff's LoRA on the VAE encoder (adapter ``default_encoder``: encoder convs, encoder
            mid-attention, ``quant_conv``; alpha and init as the UNet's), trained with the generator; 0 (FiDeSR,
            PiSA-SR): the VAE stays frozen.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        scheduler,
        lora_rank: int = 8,
        lora_alpha: float = 8.0,
        lora_init: str | bool = "gaussian",
        lora_targets: Sequence[str] = LORA_TARGETS,
        gradient_checkpointing: bool = False,
        frozen_dtype: str | torch.dtype | None = None,
        timestep: int = ONE_STEP_TIMESTEP,
        prediction: str = "residual",
        lora_sets: Sequence[str] | None = None,
        vae_lora_rank: int = 0,
    ) -> None:
        super().__init__()
        if lora_sets is not None and tuple(lora_sets) != LORA_SETS:
            raise ValueError(f"backbone.lora_sets must be null or {list(LORA_SETS)}, got {list(lora_sets)}")
        if prediction not in ("residual", "x0"):
            raise ValueError(f"backbone.prediction must be 'residual' or 'x0', got {prediction!r}")
        self.timestep, self.prediction = int(timestep), prediction
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
        dtype = resolve_dtype(frozen_dtype)
        if dtype is not None:
            for module in (unet, vae, text_encoder):
                module.to(dtype)
        self._init_adapters(lora_rank, lora_alpha, lora_init, lora_targets, lora_sets, vae_lora_rank)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.vae.eval()
        self.text_encoder.eval()
        # alphas_cumprod of the DDPM schedule (float32), needed by CSD; a buffer so it follows .to(device).
        acp = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        self.register_buffer("alphas_cumprod", acp, persistent=False)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike = DEFAULT_PRETRAINED,
        revision: str | None = None,
        variant: str | None = None,
        local_files_only: bool | None = None,
        weights: bool = True,
        expect: str | None = "auto",
        **kwargs,
    ) -> StableDiffusionBackbone:
        """Load from a hub id or a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/
        scheduler/``); remaining kwargs go to the constructor. ``weights=False`` builds the architecture
        from the config files alone, randomly initialised (on the meta device inside ``torch.device("meta")``):
        what ``fidesr-memory`` needs to plan a run without the 5 GB of weights. Where it is loaded from
        (known copies of SD 2.1-base tried in turn, the cache when offline) and the ``expect`` check of its
        config files (``"sd21-base"``; ``"auto"``: for the known SD 2.1-base ids; None: none):
        :func:`fidesr.backbone.hub.load_components`."""
        parts = load_components(pretrained, revision, variant, local_files_only, weights, expect)
        return cls(*parts, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    # ------------------------------------------------------------------ VAE
    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image [B,3,H,W] in [-1,1] -> latent [B,C,H/f,W/f] (``latent_dist.sample() * scaling_factor``)."""
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(image.to(vae_dtype)).latent_dist
        return posterior.sample(generator=generator) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent [B,C,h,w] -> image [B,3,h*f,w*f] clamped to [-1,1]."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample.clamp(-1, 1)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> CLIP hidden states [B, L, D]. The empty and negative prompts are cached per device."""
        device = self.alphas_cumprod.device
        out = [self._cached_prompt(p, device) for p in prompts]
        return torch.cat(out, dim=0)

    def cached_prompt_embeds(self, prompt: str) -> torch.Tensor | None:
        """``[1, L, D]`` embeddings of ``prompt`` if already computed on the current device, else None
        (lets the inference pipeline skip bringing an offloaded text encoder over)."""
        return self._prompt_cache.get(f"{self.alphas_cumprod.device}|{prompt}")

    def _cached_prompt(self, prompt: str, device: torch.device) -> torch.Tensor:
        key = f"{device}|{prompt}"
        hit = self._prompt_cache.get(key)
        if hit is not None:
            return hit
        ids = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        embeds = self.text_encoder(ids)[0]
        # Only a handful of prompts repeat (empty, negative, fixed); per-image tags would grow without bound.
        if len(self._prompt_cache) < 64:
            self._prompt_cache[key] = embeds
        return embeds

    # ------------------------------------------------------------------ UNet
    def residual(self, z_lq: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """The residual r [B,C,h,w] of the one-step call: one UNet call with the active adapters, or, under
        inference-time set strengths (:meth:`set_strengths`), their mix (:meth:`mixed_residual`)."""
        if self._strengths is not None:
            return self.mixed_residual(z_lq, prompt_embeds)
        return self.unet_residual(z_lq, prompt_embeds)

    def unet_residual(self, z_lq: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """One UNet call at ``self.timestep`` (1) with the active adapters: ``[B,C,h,w]``."""
        t = torch.full((z_lq.shape[0],), self.timestep, device=z_lq.device, dtype=torch.long)
        return self.unet(z_lq, t, encoder_hidden_states=prompt_embeds).sample

    def sr_latent(self, z_lq: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """SR latent from the (refined) UNet output: z_L - r, or the x0 estimate for ``prediction="x0"``."""
        if self.prediction == "residual":
            return z_lq - residual
        abar = self.alphas_cumprod[self.timestep].to(residual.dtype)
        return (z_lq - (1 - abar).sqrt() * residual) / abar.sqrt()
