"""The Stable Diffusion adapter: everything fidesr asks of SD 2.1-base, behind one small interface.

Frozen: VAE, text encoder, UNet base weights. Trained: the UNet's LoRA adapters (see :mod:`.lora`).
The CSD teacher is the same UNet with its adapters disabled, so no second UNet copy is held in memory.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from fidesr.backbone.hub import DEFAULT_PRETRAINED, load_components
from fidesr.backbone.lora import (
    FAKE_SCORE_ADAPTER,
    LORA_SETS,
    LORA_TARGETS,
    VAE_ADAPTER,
    add_adapter,
    add_lora_adapters,
    vae_encoder_lora_targets,
)
from fidesr.devices import resolve_dtype

ONE_STEP_TIMESTEP = 1  # the UNet is called once at t = 1 (OSEDiff / PiSA-SR / FiDeSR)
# "<module>.lora_A.<adapter>.weight" (peft names inside the UNet): the adapter a LoRA tensor belongs to.
_LORA_ADAPTER = re.compile(r"\.lora_[AB]\.(?P<adapter>[^.]+)\.weight$")


def _lora_to_float(module: nn.Module) -> None:
    """Trained (LoRA) weights stay float32, the optimiser's precision, whatever the frozen dtype."""
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()


class StableDiffusionBackbone(nn.Module):
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
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.lora_split: dict[str, list[str]] = {}
        if lora_rank > 0:
            self.lora_split = add_lora_adapters(
                unet, lora_rank, lora_alpha, lora_init, tuple(lora_targets), sets=lora_sets or None
            )
            _lora_to_float(unet)
        self.vae_lora_modules: list[str] = []
        if vae_lora_rank > 0:
            self.vae_lora_modules = vae_encoder_lora_targets(vae)
            add_adapter(vae, VAE_ADAPTER, self.vae_lora_modules, vae_lora_rank, lora_alpha, lora_init)
            _lora_to_float(vae)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.vae.eval()
        self.text_encoder.eval()
        # alphas_cumprod of the DDPM schedule (float32), needed by CSD; a buffer so it follows .to(device).
        acp = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)
        self.register_buffer("alphas_cumprod", acp, persistent=False)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._frozen_adapters: set[str] = set()  # active but not trained (PiSA-SR's pix set, semantic stage)
        self.fake_score_modules: list[str] = []  # modules of the VSD fake-score adapter (none: no VSD)

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

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The generator's trainable UNet parameters. With two LoRA sets or a fake-score adapter, peft's
        ``requires_grad`` follows which adapters are active, so the generator's LoRA (every set) is
        selected by adapter name instead: one optimiser over all of it, as PiSA-SR's."""
        if not self.lora_sets and not self.fake_score_modules and not self.vae_lora_modules:
            return (p for p in self.unet.parameters() if p.requires_grad)
        unet = [p for n, p in self.unet.named_parameters() if self._adapter_of(n) in self.lora_split]
        return iter(unet + [p for n, p in self.vae.named_parameters() if "lora_" in n])

    @staticmethod
    def _adapter_of(name: str) -> str | None:
        """The adapter of a UNet LoRA tensor name, None for other tensors."""
        m = _LORA_ADAPTER.search(name)
        return None if m is None else m["adapter"]

    # ------------------------------------------------------------------ LoRA sets (PiSA-SR)
    @property
    def lora_sets(self) -> tuple[str, ...]:
        """The LoRA sets this backbone's adapter names carry (``("pix", "sem")`` for PiSA-SR, else ``()``)."""
        return tuple(s for s in LORA_SETS if any(a.endswith(f"_{s}") for a in self.lora_split))

    def set_adapters_of(self, sets: Sequence[str]) -> list[str]:
        """The generator adapters of the given LoRA sets (all of them for ``sets == lora_sets``)."""
        unknown = [s for s in sets if s not in self.lora_sets]
        if unknown:
            raise ValueError(f"LoRA sets {unknown} are not on this backbone (it has {list(self.lora_sets)})")
        return [a for a in self.lora_split if any(a.endswith(f"_{s}") for s in sets)]

    def set_lora_sets(self, active: Sequence[str], trained: Sequence[str] | None = None) -> None:
        """Activate the adapters of the ``active`` sets; only those of ``trained`` (default: the active
        ones) require grad: PiSA-SR's pixel stage is ``(["pix"], ["pix"])``, its semantic stage
        ``(["pix", "sem"], ["sem"])`` (pix frozen)."""
        self.unet.set_adapters(self.set_adapters_of(active))
        self._frozen_adapters = set(self.set_adapters_of(active)) - set(
            self.set_adapters_of(trained or active)
        )
        self._apply_frozen()

    def _apply_frozen(self) -> None:
        # peft sets requires_grad=True on every active adapter whenever adapters are (re)activated.
        if self._frozen_adapters:
            for name, param in self.unet.named_parameters():
                if self._adapter_of(name) in self._frozen_adapters:
                    param.requires_grad_(False)

    @contextlib.contextmanager
    def adapters_active(self, adapters: Sequence[str]) -> Iterator[None]:
        """Only ``adapters`` active inside the block; the previously active ones (and the frozen flags)
        restored after, also on error."""
        previous = list(self.unet.active_adapters())
        self.unet.set_adapters(list(adapters))
        try:
            yield
        finally:
            self.unet.set_adapters(previous)
            self._apply_frozen()

    def mixed_residual(
        self, z_lq: torch.Tensor, prompt_embeds: torch.Tensor, lambda_pix: float, lambda_sem: float
    ) -> torch.Tensor:
        """PiSA-SR's inference-time strengths (its ``pisasr.py``, DESIGN section 7):
        ``lambda_pix * eps_pix + lambda_sem * (eps_both - eps_pix)`` with ``eps_pix`` the UNet with only the
        pixel adapters and ``eps_both`` with both sets; ``(1, 1)`` is ``eps_both`` in one UNet call.

        z_lq [B,C,h,w], prompt_embeds [B,L,D] -> the mixed residual [B,C,h,w].
        """
        if self.lora_sets != LORA_SETS:
            raise ValueError(
                "lambda_pix / lambda_sem need a model with PiSA-SR's two LoRA sets (backbone.lora_sets)"
            )
        if lambda_pix == 1 and lambda_sem == 1:
            with self.adapters_active(self.set_adapters_of(LORA_SETS)):
                return self.residual(z_lq, prompt_embeds)
        with self.adapters_active(self.set_adapters_of(["pix"])):
            eps_pix = self.residual(z_lq, prompt_embeds)
        with self.adapters_active(self.set_adapters_of(LORA_SETS)):
            eps_both = self.residual(z_lq, prompt_embeds)
        return lambda_pix * eps_pix + lambda_sem * (eps_both - eps_pix)

    # ------------------------------------------------------------------ VSD fake score (OSEDiff)
    def add_fake_score_adapter(self, rank: int, alpha: float, modules: str = "mid") -> None:
        """Add OSEDiff's fake-score LoRA as one more adapter (:data:`FAKE_SCORE_ADAPTER`) on this UNet: the
        fake score is the frozen base UNet + this adapter, evaluated with the generator's adapters off, so
        no second UNet is held. ``modules``: ``"mid"`` (the modules of ``default_others``: the official
        code's effective set-up, where only that adapter of its fake-score UNet is ever active) or ``"all"``
        (every generator LoRA module, what the official code intends). Inactive (no grad) until used."""
        if modules not in ("mid", "all"):
            raise ValueError(f"fake-score adapter modules must be 'mid' or 'all', got {modules!r}")
        if not self.lora_split:
            raise ValueError("the VSD fake-score adapter needs the generator's LoRA (backbone.lora_rank > 0)")
        if self.fake_score_modules:
            raise ValueError("this backbone already has a fake-score adapter")
        if modules == "all":
            targets = sorted({m for mods in self.lora_split.values() for m in mods})
        else:
            targets = sorted(
                {m for a, mods in self.lora_split.items() if a.startswith("default_others") for m in mods}
            )
        previous = list(self.unet.active_adapters())
        add_adapter(self.unet, FAKE_SCORE_ADAPTER, targets, rank, alpha)
        for name, param in self.unet.named_parameters():
            if self._adapter_of(name) == FAKE_SCORE_ADAPTER:
                param.data = param.data.float()
        self.unet.set_adapters(previous)
        self._apply_frozen()
        self.fake_score_modules = targets

    def fake_score_parameters(self) -> list[nn.Parameter]:
        """The fake-score adapter's LoRA parameters (its own optimiser)."""
        return [p for n, p in self.unet.named_parameters() if self._adapter_of(n) == FAKE_SCORE_ADAPTER]

    def fake_eps(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the fake score (base UNet + fake-score adapter only); builds a graph into
        the adapter when grad is enabled. z_t [N,C,h,w], t [N] long, prompt_embeds [N,L,D] -> [N,C,h,w]."""
        if not self.fake_score_modules:
            raise ValueError("no fake-score adapter: add_fake_score_adapter first")
        with self.adapters_active([FAKE_SCORE_ADAPTER]):
            return self.unet(z_t, t, encoder_hidden_states=prompt_embeds).sample

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
        """One UNet call at ``self.timestep`` (1) with the LoRA adapters: the residual r [B,C,h,w]."""
        t = torch.full((z_lq.shape[0],), self.timestep, device=z_lq.device, dtype=torch.long)
        return self.unet(z_lq, t, encoder_hidden_states=prompt_embeds).sample

    def sr_latent(self, z_lq: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """SR latent from the (refined) UNet output: z_L - r, or the x0 estimate for ``prediction="x0"``."""
        if self.prediction == "residual":
            return z_lq - residual
        abar = self.alphas_cumprod[self.timestep].to(residual.dtype)
        return (z_lq - (1 - abar).sqrt() * residual) / abar.sqrt()

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The frozen base UNet: LoRA adapters off inside the block, restored after (also on error)."""
        if not self.lora_split:
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()
            self._apply_frozen()

    @torch.no_grad()
    def teacher_eps(self, z_t: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Noise prediction of the frozen SD UNet (adapters disabled); no graph is built.

        z_t [N,C,h,w], t [N] long in [0, 1000), prompt_embeds [N,L,D] -> eps [N,C,h,w].
        """
        with self.adapters_disabled():
            return self.unet(z_t, t, encoder_hidden_states=prompt_embeds).sample

    # ------------------------------------------------------------------ LoRA state
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's LoRA tensors of the UNet (names as in ``unet.state_dict()``, adapter names
        included); not the VSD fake-score adapter (:meth:`fake_score_state_dict`)."""
        return {
            k: v
            for k, v in self.unet.state_dict().items()
            if "lora_" in k and self._adapter_of(k) != FAKE_SCORE_ADAPTER
        }

    def vae_lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The VAE-encoder LoRA tensors (``vae.state_dict()`` names); empty without one."""
        return {k: v for k, v in self.vae.state_dict().items() if "lora_" in k}

    def load_vae_lora_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "trained weights"
    ) -> None:
        """Load the VAE-encoder LoRA (names as :meth:`vae_lora_state_dict`); all of it, nothing else."""
        own = self.vae_lora_state_dict()
        if set(state) != set(own):
            raise KeyError(
                f"{source}: the VAE-encoder LoRA does not fit (backbone.vae_lora_rank?): "
                f"{len(set(own) - set(state))} missing, {len(set(state) - set(own))} unknown"
            )
        self.vae.load_state_dict(dict(state), strict=False, assign=False)

    def fake_score_state_dict(self) -> dict[str, torch.Tensor]:
        """The VSD fake-score adapter's tensors (training state: checkpoints for resume, never exports)."""
        return {k: v for k, v in self.unet.state_dict().items() if self._adapter_of(k) == FAKE_SCORE_ADAPTER}

    def add_named_adapters(self, split: Mapping[str, Sequence[str]], rank: int, alpha: float) -> None:
        """Add LoRA adapters with *given* module lists (an official ``unet_lora_*_modules`` or an exported
        folder's) to a backbone built with ``lora_rank=0``; the weights are loaded right after."""
        if self.lora_split:
            raise ValueError("add_named_adapters needs a backbone built without LoRA (lora_rank=0)")
        names = [name for name, targets in split.items() if targets]
        for name in names:
            add_adapter(self.unet, name, split[name], rank, alpha)
        self.unet.set_adapters(names)
        self.lora_split = {name: list(split[name]) for name in names}
        self.lora_rank, self.lora_alpha = rank, float(alpha)

    def load_lora_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "trained weights"
    ) -> None:
        """Load LoRA tensors named as in :meth:`lora_state_dict` (``unet.state_dict()`` names).

        Every LoRA tensor of this UNet must be given; non-LoRA UNet tensors (official files may carry
        ``conv_in``) are loaded when the UNet has them. Raises ``KeyError`` naming ``source`` and the
        keys that do not fit (missing, unknown, wrong shape).
        """
        unet_sd = self.unet.state_dict()
        missing = sorted(
            k
            for k in unet_sd
            if "lora_" in k and k not in state and self._adapter_of(k) != FAKE_SCORE_ADAPTER
        )
        unknown = sorted(k for k in state if k not in unet_sd)
        shapes = sorted(k for k in state if k in unet_sd and tuple(state[k].shape) != tuple(unet_sd[k].shape))
        problems = []
        if missing:
            problems.append(f"{len(missing)} LoRA tensors missing (e.g. {missing[:2]})")
        if unknown:
            problems.append(
                f"{len(unknown)} UNet tensors this backbone lacks (e.g. {unknown[:2]}; other LoRA targets?)"
            )
        if shapes:
            problems.append(f"{len(shapes)} tensors of another shape (e.g. {shapes[:2]}; another LoRA rank?)")
        if problems:
            raise KeyError(f"{source} do not fit the model: " + "; ".join(problems))
        self.unet.load_state_dict(dict(state), strict=False, assign=False)

    def fuse_lora(self) -> None:
        """Merge the adapters into the UNet weights and remove the adapter layers (diffusers' own
        ``fuse_lora`` + ``unload_lora``). Inference only: afterwards the UNet is a plain diffusers UNet
        (one weight per layer, the friendliest to ``torch.compile``) and the teacher view is gone."""
        if self.vae_lora_modules:
            self.vae.fuse_lora(adapter_names=[VAE_ADAPTER])
            self.vae.unload_lora()
            self.vae_lora_modules = []
        if not self.lora_split:
            return
        self.unet.fuse_lora(adapter_names=list(self.lora_split))
        self.unet.unload_lora()
        self.lora_split = {}
