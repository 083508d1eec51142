"""SSIM as the protocol computes it (pyiqa's, Y of YCbCr), with the Gaussian window as two 1-D passes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> list[float]:
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (g / g.sum()).tolist()


def _filter_valid(x: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """'valid' correlation with ``outer(taps, taps)`` as two 1-D passes of shifted adds (no im2col)."""
    k = len(taps)
    h, w = x.shape[-2:]
    rows = sum(x[..., i : i + h - k + 1, :] * t for i, t in enumerate(taps))
    return sum(rows[..., :, i : i + w - k + 1] * t for i, t in enumerate(taps))


class SeparableSSIM(torch.nn.Module):
    """pyiqa's SSIM (``pyiqa.archs.ssim_arch.SSIM`` with ``downsample=False``) with the 11x11 Gaussian
    window (sigma 1.5) applied as two 1-D passes.

    Same pre-processing (pyiqa's ``preprocess_rgb``: Y channel of ``color_space`` or RGB, scaled to
    [0,255] and rounded as MATLAB does), float64, 'valid' filtering, ReLU on the contrast-structure term,
    mean over channels and pixels. pyiqa rounds its 2-D window to float32; this window is exact, which
    moves scores by up to ~3e-7 (tests check agreement within 1e-6).

    Input: ``X``, ``Y`` ``[B,3,H,W]`` in [0,1]. Output: ``[B]`` float64.
    """

    def __init__(self, test_y_channel: bool = True, color_space: str = "ycbcr", crop_border: int = 0) -> None:
        super().__init__()
        self.test_y_channel = test_y_channel
        self.color_space = color_space
        self.crop_border = int(crop_border)
        self.taps = _gaussian_1d()

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        from pyiqa.archs.func_util import preprocess_rgb

        if X.shape != Y.shape:
            raise ValueError(f"SSIM: shapes differ, {tuple(X.shape)} vs {tuple(Y.shape)}")
        c = self.crop_border
        if c:
            X, Y = X[..., c:-c, c:-c], Y[..., c:-c, c:-c]
        data_range = 255.0
        X = preprocess_rgb(X, self.test_y_channel, data_range, self.color_space).double()
        Y = preprocess_rgb(Y, self.test_y_channel, data_range, self.color_space).double()
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        mu1, mu2 = _filter_valid(X, self.taps), _filter_valid(Y, self.taps)
        mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
        s11 = _filter_valid(X * X, self.taps) - mu1_sq
        s22 = _filter_valid(Y * Y, self.taps) - mu2_sq
        s12 = _filter_valid(X * Y, self.taps) - mu1_mu2
        cs = F.relu((2 * s12 + c2) / (s11 + s22 + c2))
        return (((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs).mean(dim=(1, 2, 3))
