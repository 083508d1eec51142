"""Bicubic x4 + Gaussian noise + JPEG: the simple, fast preset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from . import ops
from .base import as_range, batch_size, draw_seed, lq_size, uniform


class BicubicDegradation:
    """Antialiased bicubic downscale, Gaussian noise, JPEG with per-sample quality, 8-bit rounding.

    Params from :meth:`sample` (0-d each; ``[B]`` after collate):
        ``noise_sigma`` float32, 0..255 units; ``jpeg_quality`` float32 in ``[0, 100]`` (absent without
        JPEG); ``seed`` int64.

    Args:
        scale: downscale factor.
        noise_sigma: ``[min, max]`` of the Gaussian noise std in 0..255 units (uniform per sample).
        jpeg_quality: ``[min, max]`` JPEG quality (uniform per sample), or None: no JPEG. With
            ``noise_sigma=[0, 0]`` the LQ is then the clean 8-bit bicubic LQ of the demo's validation pairs
            (``degradation=bicubic_clean``).
        resize_back: bicubic-upsample the LQ back to the GT size (what one-step models train on).
    """

    def __init__(
        self,
        scale: int = 4,
        noise_sigma: Sequence[float] = (0.0, 10.0),
        jpeg_quality: Sequence[float] | None = (60.0, 95.0),
        resize_back: bool = True,
    ) -> None:
        if int(scale) < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = int(scale)
        self.noise_sigma = as_range(noise_sigma, "noise_sigma", low=0.0)
        self.jpeg_quality = (
            None if jpeg_quality is None else as_range(jpeg_quality, "jpeg_quality", low=0.0, high=100.0)
        )
        self.resize_back = bool(resize_back)

    def __repr__(self) -> str:
        return (
            f"BicubicDegradation(scale={self.scale}, noise_sigma={list(self.noise_sigma)}, "
            f"jpeg_quality={None if self.jpeg_quality is None else list(self.jpeg_quality)}, "
            f"resize_back={self.resize_back})"
        )

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw one sample's params on CPU (0-d tensors)."""
        params = {"noise_sigma": uniform(generator, *self.noise_sigma)}
        if self.jpeg_quality is not None:
            params["jpeg_quality"] = uniform(generator, *self.jpeg_quality)
        params["seed"] = draw_seed(generator)
        return params

    @torch.no_grad()  # data synthesis: JPEG's hard rounding has no useful gradient anyway
    def apply(self, gt: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``gt [B, 3, H, W]`` in ``[0, 1]`` -> LQ ``[B, 3, H/s, W/s]`` (or ``[B, 3, H, W]``) float32 in ``[0, 1]``."""
        batch_size(gt, params)
        size = lq_size(gt, self.scale)
        x = gt.float()
        # Antialiased bicubic = the usual "bicubic LR" (MATLAB imresize-like), not the aliasing torch default.
        x = ops.resize(x, size=size, mode="bicubic", antialias=True)
        gens = ops.generators_from_seeds(params["seed"], x.device)
        gray = torch.zeros(x.shape[0], dtype=torch.bool)
        x = torch.clamp(ops.add_gaussian_noise(x, params["noise_sigma"], gray, gens), 0, 1)
        if self.jpeg_quality is not None:
            x = ops.jpeg(x, params["jpeg_quality"])
        x = ops.quantize_8bit(x)
        if self.resize_back:
            x = torch.clamp(ops.resize(x, size=tuple(gt.shape[-2:]), mode="bicubic"), 0, 1)
        return x
