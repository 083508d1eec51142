"""Fixtures of the metric tests: an isolated weights directory per test and NIQE's parameters (from
``_metrics_shared``, shared with the weight tests), the shared RealSR data."""

from __future__ import annotations

import pytest
import torch

from _metrics_shared import REALSR, niqe_weights, weights_dir  # noqa: F401 (fixtures, used by name)


@pytest.fixture(scope="session")
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two SR/GT batches ``[2,3,96,96]`` in [0,1]: RealSR crops when available, else smooth synthetics."""
    if REALSR.is_dir():
        from fidesr.metrics.images import read_for_metrics

        names = ["Canon_001_LR4.png", "Nikon_010_LR4.png"]
        sr = torch.cat([read_for_metrics(REALSR / "osediff" / n)[..., 200:296, 160:256] for n in names])
        gt = torch.cat([read_for_metrics(REALSR / "gt" / n)[..., 200:296, 160:256] for n in names])
        return sr, gt
    return synthetic_pair(96)


@pytest.fixture(scope="session")
def make_pair() -> object:
    """``make_pair(size, n=2, seed=0) -> (sr, gt)``: synthetic batches (see ``synthetic_pair``)."""
    return synthetic_pair


def synthetic_pair(size: int, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (8-bit values) and a noisy version of them: ``(sr, gt)``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    gt = torch.nn.functional.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    gt = gt.clamp(0, 1).mul(255).round().div(255)
    sr = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1).mul(255).round().div(255)
    return sr, gt
