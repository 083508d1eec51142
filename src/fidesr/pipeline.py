"""Inference: LQ image -> SR image, shared by validation and ``fidesr-upscale``.

Pre-processing follows the reference implementations: LQ images whose short side is under
``min_lq_size`` are enlarged first (and the output brought back to ``scale`` x the input size), the LQ is
bicubic-upsampled x``scale`` and trimmed to a multiple of the VAE factor (restored at the end). LFIM edits
the SR latent before decoding; its strengths can be set per call.

Large images: the one-step UNet + LRRB run on overlapping latent tiles (96 with overlap 32 by default,
Gaussian blending, as OSEDiff / PiSA-SR), LFIM runs once on the stitched latent, and the VAE encodes and
decodes in tiles (encoder tiles 1024 px, decoder tiles 224 latent px). All three use the one blending
implementation in :mod:`fidesr.tiling`.

Constructors: the module-owned pipeline of ``FiDeSRModule`` (validation, LoRA unmerged, training goes on),
and, for inference only, :meth:`FiDeSRPipeline.from_pretrained`, the one loader of every model source
(training checkpoint, exported folder, official ``.pkl``, Hub repo id; :mod:`fidesr.modelio`), paired
with :meth:`~FiDeSRPipeline.save_pretrained`. It merges the LoRA into the UNet weights and drops the
adapter layers (diffusers' ``fuse_lora`` + ``unload_lora``): a plain diffusers UNet, the fastest and the
friendliest to ``torch.compile``. A model with PiSA-SR's two LoRA sets (``backbone.lora_sets``) stays
unfused, so that the sets can be weighed per call (``strengths``): the adapter layers cost some
speed, and strengths other than (1, 1) two UNet calls per tile (PiSA-SR's own inference does the same).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.components.color_fix import color_fix as apply_color_fix
from fidesr.devices import resolve_device, resolve_precision
from fidesr.errors import NonFiniteOutputError
from fidesr.generator import OneStepOutput, one_step
from fidesr.modelio.read import TrainedWeights
from fidesr.modelio.released import locate_model
from fidesr.tiling import tiled_apply

log = logging.getLogger(__name__)

COLOR_FIXES = ("adain", "wavelet", "none")


@dataclass
class PipelineOutput:
    sr: torch.Tensor  # [B,3,s*h,s*w] in [0,1]
    lq_up: torch.Tensor  # [B,3,s*h,s*w] in [0,1], the bicubic-upsampled LQ (the baseline)
    latents: OneStepOutput | None = None


class FiDeSRPipeline:
    """One-step SR inference around a backbone, an optional LRRB and an optional LFIM.

    Args:
        backbone: the SD adapter (LoRA merged or not).
        lrrb: the latent residual refinement block, or None.
        lfim: the latent frequency injection module, or None (no frequency editing).
        scale: upscaling factor (4).
        color_fix: ``"adain"`` (default of the references), ``"wavelet"`` or ``"none"``.
        min_lq_size: LQ images with a shorter side are enlarged to it first (128 = 512 px SD inputs).
        prompt: the text prompt; the reference uses the empty prompt at inference.
        tile_size, tile_overlap: latent tiles for the UNet + LRRB, in latent px (96 / 32 as OSEDiff and
            PiSA-SR); ``None`` runs the whole latent at once. Images that fit one tile give the untiled
            result (up to float rounding).
        tiles_per_call: latent tiles batched into one UNet call (speed vs memory).
        vae_tiling: encode and decode in tiles (``vae_encoder_tile`` px and ``vae_decoder_tile`` latent px,
            with the given overlaps); only images larger than a tile are actually split.
        check_finite: raise :class:`~fidesr.errors.NonFiniteOutputError` for images whose result holds
            NaN or Inf (which would be saved as black or white); validation during training turns it off
            and logs what comes out.
    """

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        lrrb: nn.Module | None = None,
        lfim: nn.Module | None = None,
        scale: int = 4,
        color_fix: str = "adain",
        min_lq_size: int = 128,
        prompt: str = "",
        tile_size: int | None = 96,
        tile_overlap: int = 32,
        tiles_per_call: int = 1,
        vae_tiling: bool = True,
        vae_encoder_tile: int = 1024,
        vae_encoder_overlap: int = 256,
        vae_decoder_tile: int = 224,
        vae_decoder_overlap: int = 32,
        check_finite: bool = True,
    ) -> None:
        self._check_color_fix(color_fix)
        self.backbone, self.lrrb, self.lfim = backbone, lrrb, lfim
        self.scale, self.color_fix, self.min_lq_size, self.prompt = scale, color_fix, min_lq_size, prompt
        self.tile_size, self.tile_overlap, self.tiles_per_call = tile_size, tile_overlap, tiles_per_call
        self.vae_tiling = vae_tiling
        self.vae_encoder_tile, self.vae_encoder_overlap = vae_encoder_tile, vae_encoder_overlap
        self.vae_decoder_tile, self.vae_decoder_overlap = vae_decoder_tile, vae_decoder_overlap
        self.offload_text_encoder = False
        self.check_finite = check_finite
        self.compiled: str | None = None
        self.weights: TrainedWeights | None = None  # set by from_pretrained (what save_pretrained writes)

    # ------------------------------------------------------------------ construction for inference
    @classmethod
    def for_inference(
        cls,
        backbone: StableDiffusionBackbone,
        lrrb: nn.Module | None = None,
        lfim: nn.Module | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offload_text_encoder: bool = True,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> FiDeSRPipeline:
        """Finish a loaded model for inference: fuse the LoRA (merged in float32, then cast), eval mode,
        no gradients, everything on ``device`` in ``dtype`` (default: fp16 on CUDA, fp32 on CPU).

        ``offload_text_encoder``: the empty-prompt embedding is computed once, then the text encoder
        (~0.7 GB for SD 2.1 in fp16) waits on the CPU; a new prompt brings it over for one call.
        ``channels_last``: NHWC memory format for the UNet and VAE convolutions.
        """
        dev = resolve_device(device)
        dt = resolve_precision(dtype, dev)
        if not backbone.lora_sets:  # two LoRA sets stay apart: their strengths are set per call
            backbone.fuse_lora()
        for module in (backbone, lrrb, lfim):
            if module is not None:
                module.requires_grad_(False).eval().to(device=dev, dtype=dt)
        backbone.alphas_cumprod.data = backbone.alphas_cumprod.data.float()  # schedule stays float32
        if channels_last:
            for module in (backbone.unet, backbone.vae, lrrb):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        pipe = cls(backbone, lrrb, lfim, **kwargs)
        if offload_text_encoder:
            pipe.prompt_embeds(pipe.prompt, 1)
            backbone.text_encoder.to("cpu")
            pipe.offload_text_encoder = True
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike | TrainedWeights,
        *,
        pretrained: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        unsafe_pickle: bool = False,
        lfim: nn.Module | None | str = "stored",
        **kwargs: Any,
    ) -> FiDeSRPipeline:
        """The one entry point that loads a trained model for inference: every command line, the app and the
        benchmark call it. ``source``: a released model by name (``"fidesr"``, ``"osediff"``, ``"pisasr"``:
        :mod:`fidesr.modelio.released`), a training checkpoint, an exported folder, an official ``.pkl``
        (FiDeSR, OSEDiff or PiSA-SR, told apart by their keys), a Hub repo id or a
        :class:`~fidesr.modelio.read.TrainedWeights` (see :mod:`fidesr.modelio.read`), read as data.
        Underneath, :meth:`TrainedWeights.load` reads the source and :meth:`TrainedWeights.build` makes the
        modules; call those only to handle the weights without a pipeline (``fidesr-export``).

        Args:
            source: where the trained weights are (resolved by :func:`fidesr.modelio.released.locate_model`).
            pretrained: base SD 2.1-base (hub id or folder), replacing the one the source names.
            device, dtype: see :meth:`for_inference`.
            revision: Hub revision for a repo id.
            unsafe_pickle: allow full unpickling of a ``.ckpt``/``.pkl`` (only for files you trust).
            lfim: ``"stored"`` (the source's LFIM), None (off) or a module.
            kwargs: pipeline options (tiling, colour fix, ...); they win over the stored ``model`` defaults.
        """
        weights = (
            source
            if isinstance(source, TrainedWeights)
            else TrainedWeights.load(
                locate_model(str(source), revision=revision),
                pretrained=pretrained,
                unsafe_pickle=unsafe_pickle,
            )
        )
        backbone, lrrb, stored_lfim = weights.build(pretrained)
        model = weights.config.get("model") or {}
        defaults = {k: model[k] for k in ("color_fix", "min_lq_size") if model.get(k) is not None}
        lfim_module = stored_lfim if isinstance(lfim, str) and lfim == "stored" else lfim
        pipe = cls.for_inference(
            backbone, lrrb, lfim_module, device=device, dtype=dtype, **{**defaults, **kwargs}
        )
        pipe.weights = weights
        if weights.info.get("prompt_note") and not pipe.prompt:  # e.g. OSEDiff without its DAPE tagger
            log.info("%s: %s", weights.source, weights.info["prompt_note"])
        return pipe

    def save_pretrained(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the trained weights this pipeline was loaded from as an exported folder
        (:meth:`fidesr.modelio.read.TrainedWeights.save_pretrained`)."""
        if self.weights is None:
            raise ValueError("this pipeline was not loaded with from_pretrained: nothing to save")
        return self.weights.save_pretrained(folder, overwrite=overwrite)

    # ------------------------------------------------------------------ speed
    def compile(self, mode: str = "reduce-overhead", dynamic: bool = False) -> FiDeSRPipeline:
        """``torch.compile`` the UNet, the VAE encoder/decoder, the LRRB and LFIM, in place.

        ``reduce-overhead`` (CUDA graphs) pays most at batch 1, where the UNet is launch-bound;
        ``max-autotune-no-cudagraphs`` tunes kernels (minutes of compilation). Each new image (or tile)
        size compiles once; ``dynamic=False`` keeps the kernels specialised to it.
        """
        vae = self.backbone.vae
        for module in (self.backbone.unet, vae.encoder, vae.decoder, self.lrrb, self.lfim):
            if module is not None:
                module.compile(mode=mode, dynamic=dynamic)
        self.compiled = mode
        return self

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.backbone.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.vae.parameters()).dtype

    @staticmethod
    def _check_color_fix(mode: str) -> None:
        if mode not in COLOR_FIXES:
            raise ValueError(f"color_fix must be 'adain', 'wavelet' or 'none', got {mode!r}")

    # ------------------------------------------------------------------ stages
    def upsample(self, lq: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """LQ [B,3,h,w] in [0,1] -> (model input [B,3,H',W'] in [0,1], final output size (s*h, s*w))."""
        h, w = lq.shape[-2:]
        out_size = (h * self.scale, w * self.scale)
        if min(h, w) < self.min_lq_size:
            f = self.min_lq_size / min(h, w)
            lq = F.interpolate(lq, size=(round(h * f), round(w * f)), mode="bicubic", align_corners=False)
        up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        m = self.backbone.vae_scale_factor
        up = up[..., : up.shape[-2] // m * m, : up.shape[-1] // m * m]
        return up, out_size

    @contextlib.contextmanager
    def _text_encoder_on_device(self) -> Iterator[None]:
        te = self.backbone.text_encoder
        if not self.offload_text_encoder:
            yield
            return
        te.to(self.device)
        try:
            yield
        finally:
            te.to("cpu")

    def prompt_embeds(self, prompt: str, batch: int) -> torch.Tensor:
        """CLIP hidden states of ``prompt`` for a batch, ``[batch, L, D]`` (an expanded view). The backbone
        caches them per device; the (offloaded) text encoder only moves over for a prompt it has not seen."""
        embeds = self.backbone.cached_prompt_embeds(prompt)
        if embeds is None:
            with self._text_encoder_on_device():
                embeds = self.backbone.encode_prompt([prompt])
        return embeds.expand(batch, -1, -1)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image [B,3,H,W] in [-1,1] -> latent [B,C,H/8,W/8], in VAE tiles when ``vae_tiling``."""
        if not self.vae_tiling:
            return self.backbone.encode(x, generator=generator)
        f = self.backbone.vae_scale_factor
        return tiled_apply(
            lambda t: self.backbone.encode(t, generator=generator),
            x,
            self.vae_encoder_tile // f,
            self.vae_encoder_overlap // f,
            in_factor=f,
        )

    def denoise(self, z_lq: torch.Tensor, prompt_embeds: torch.Tensor) -> OneStepOutput:
        """The one-step generator (UNet + LRRB), on latent tiles when ``tile_size`` is set."""
        if not self.tile_size:
            return one_step(self.backbone, self.lrrb, z_lq, prompt_embeds)
        b, c = z_lq.shape[:2]

        def step(tiles: torch.Tensor) -> torch.Tensor:
            embeds = prompt_embeds.repeat(tiles.shape[0] // b, 1, 1)
            out = one_step(self.backbone, self.lrrb, tiles, embeds)
            return torch.cat([out.residual, out.refined_residual], dim=1)

        both = tiled_apply(step, z_lq, self.tile_size, self.tile_overlap, tiles_per_call=self.tiles_per_call)
        residual, refined = both[:, :c], both[:, c:]
        # z_r is affine in r' (sr_latent), so blending r' and mapping once equals blending the tiles' z_r.
        return OneStepOutput(
            z_lq=z_lq,
            residual=residual,
            refined_residual=refined,
            z_sr=self.backbone.sr_latent(z_lq, refined),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B,C,h,w] -> image [B,3,8h,8w] in [-1,1], in VAE tiles when ``vae_tiling``."""
        if not self.vae_tiling:
            return self.backbone.decode(z)
        f = self.backbone.vae_scale_factor
        # The blend stays float32: no round trip through fp16/bf16 for the final image.
        return tiled_apply(
            self.backbone.decode,
            z,
            self.vae_decoder_tile,
            self.vae_decoder_overlap,
            out_factor=f,
            out_dtype=torch.float32,
        )

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        lq: torch.Tensor,
        lf_scale: float | None = None,
        hf_scale: float | None = None,
        prompt: str | None = None,
        color_fix: str | None = None,
        generator: torch.Generator | None = None,
        return_latents: bool = False,
        strengths: Mapping[str, float] | None = None,
    ) -> PipelineOutput:
        """LQ [B,3,h,w] in [0,1] (any device) -> SR [B,3,scale*h,scale*w] in [0,1] on the pipeline's device.

        Args:
            lf_scale, hf_scale: LFIM strengths for this call (None: the module's; 0 switches a branch off).
            prompt: text prompt for this call (None: the pipeline's, empty by default).
            color_fix: colour correction for this call (None: the pipeline's).
            generator: for the VAE posterior sample (reproducible outputs).
            return_latents: also return the latents (z_L, r, r', z_r; before LFIM).
            strengths: inference-time strengths of a model's LoRA sets (``{"pix": 1.0, "sem": 0.5}`` for
                PiSA-SR's pixel and semantic sets; a set not named counts 1), mixed as
                :meth:`~fidesr.backbone.adapters.AdapterMixin.set_strengths` says. None: the model as
                loaded (every set active).
        """
        if self.lfim is None and (lf_scale or hf_scale):
            raise ValueError("LFIM strengths were given but this pipeline has no LFIM (lfim: null)")
        mode = self.color_fix if color_fix is None else color_fix
        self._check_color_fix(mode)
        if self.compiled == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        lq = lq.to(self.device, torch.float32)
        up, out_size = self.upsample(lq)
        x = up * 2 - 1
        z_lq = self.encode(x, generator)
        embeds = self.prompt_embeds(self.prompt if prompt is None else prompt, lq.shape[0])
        with self.backbone.set_strengths(strengths):
            out = self.denoise(z_lq, embeds.to(z_lq.dtype))
        z = out.z_sr
        if self.lfim is not None:
            z = self.lfim(z, out.z_lq, out.refined_residual, x, lf_scale=lf_scale, hf_scale=hf_scale)
        sr = self.decode(z).float()
        sr = apply_color_fix(sr, x, mode)
        # Before the clamp, which keeps NaN (saved as black) and turns +Inf into white.
        bad = (~torch.isfinite(sr)).flatten(1).any(1).tolist() if self.check_finite else []
        sr = ((sr + 1) / 2).clamp(0, 1)
        if sr.shape[-2:] != out_size:
            sr = F.interpolate(sr, size=out_size, mode="bicubic", align_corners=False).clamp(0, 1)
            up = F.interpolate(up, size=out_size, mode="bicubic", align_corners=False).clamp(0, 1)
        result = PipelineOutput(sr=sr, lq_up=up, latents=out if return_latents else None)
        if any(bad):
            raise NonFiniteOutputError(
                "the model's output is not finite (NaN or Inf): its weights or the LFIM strengths give "
                "non-finite values; no image was produced",
                [i for i, b in enumerate(bad) if b],
                result,
            )
        return result
