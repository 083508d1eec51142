"""Colour correction of SR outputs towards the (upsampled) LQ input, as in StableSR/OSEDiff/PiSA-SR/FiDeSR.

* AdaIN: per-channel mean/std of the SR image matched to the reference.
* Wavelet: 5-level a-trous decomposition (3x3 ``[1,2,1]x[1,2,1]/16`` kernel, dilation ``2^i``, replicate
  padding); the output keeps the SR's high-frequency bands and takes the reference's low band.

Tensor versions of the public ``wavelet_color_fix.py`` of those projects: same formulas, but on batched
tensors in any range, computed in float32 and returned in the input dtype, **without** the final clamp
(the PIL wrappers there clamp to [0, 1] before quantising; the caller clamps to its range).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ColorFixMode",
    "adain_color_fix",
    "color_fix",
    "wavelet_blur",
    "wavelet_color_fix",
    "wavelet_decomposition",
]

ColorFixMode = Literal["adain", "wavelet", "none"]


def _mean_std(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and ``sqrt(var_unbiased + eps)``, each ``[B, C, 1, 1]``."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    return flat.mean(dim=2).view(b, c, 1, 1), (flat.var(dim=2) + eps).sqrt().view(b, c, 1, 1)


def adain_color_fix(sr: Tensor, ref: Tensor, eps: float = 1e-5) -> Tensor:
    """``(sr - mean(sr)) / std(sr) * std(ref) + mean(ref)`` per image and channel.

    Args:
        sr: ``[B, C, H, W]`` any range.
        ref: ``[B, C, H', W']`` same range (sizes may differ: only statistics are used).
        eps: added to the (unbiased) variances before the sqrt.

    Returns:
        ``[B, C, H, W]`` in ``sr``'s dtype, not clamped.
    """
    if sr.shape[:2] != ref.shape[:2]:
        raise ValueError(
            f"sr and ref need the same batch and channels, got {tuple(sr.shape)} / {tuple(ref.shape)}"
        )
    x = sr.float()
    sr_mean, sr_std = _mean_std(x, eps)
    ref_mean, ref_std = _mean_std(ref.float(), eps)
    return ((x - sr_mean) / sr_std * ref_std + ref_mean).to(sr.dtype)


def wavelet_blur(x: Tensor, radius: int) -> Tensor:
    """3x3 binomial blur ``[1,2,1]x[1,2,1]/16`` with dilation ``radius`` and replicate padding.

    ``x``: ``[B, C, H, W]`` float -> same shape (depthwise).
    """
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3).contiguous()
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=radius)


def wavelet_decomposition(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """A-trous decomposition: ``(high, low)`` with ``high = sum_i (L_i - L_{i+1})`` and ``low = L_levels``,
    ``L_0 = x``, ``L_{i+1} = wavelet_blur(L_i, 2^i)``; ``high + low == x`` up to rounding.

    ``x``: ``[B, C, H, W]`` float -> two tensors of the same shape.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high = high + (low - blurred)  # accumulate band by band, as the reference code does
        low = blurred
    return high, low


def wavelet_color_fix(sr: Tensor, ref: Tensor, levels: int = 5) -> Tensor:
    """``high(sr) + low(ref)``: keep the SR's detail, take the reference's colours/low frequencies.

    Args:
        sr, ref: ``[B, C, H, W]`` of equal shape, any (common) range.
        levels: number of a-trous levels (5).

    Returns:
        ``[B, C, H, W]`` in ``sr``'s dtype, not clamped.
    """
    if sr.shape != ref.shape:
        raise ValueError(f"wavelet colour fix needs equal shapes, got {tuple(sr.shape)} / {tuple(ref.shape)}")
    high, _ = wavelet_decomposition(sr.float(), levels)
    _, low = wavelet_decomposition(ref.float(), levels)
    return (high + low).to(sr.dtype)


def color_fix(sr: Tensor, ref: Tensor, mode: ColorFixMode = "adain") -> Tensor:
    """Dispatch: ``"adain"`` (default of FiDeSR), ``"wavelet"``, or ``"none"`` (``"nofix"`` accepted as
    the official spelling) which returns ``sr`` unchanged. Images ``[B, C, H, W]``, not clamped."""
    if mode == "adain":
        return adain_color_fix(sr, ref)
    if mode == "wavelet":
        return wavelet_color_fix(sr, ref)
    if mode in ("none", "nofix"):
        return sr
    raise ValueError(f"unknown colour-fix mode {mode!r}; expected 'adain', 'wavelet' or 'none'")
