"""The degradation contract and small helpers shared by the presets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

SEED_HIGH = 2**62
"""Exclusive upper bound of the per-sample noise seeds (fits int64 and ``Generator.manual_seed``)."""


@runtime_checkable
class Degradation(Protocol):
    """HQ -> LQ synthesis split into a CPU sampling step and a batched, deterministic device step.

    ``sample`` runs in data-loader workers, once per sample, and returns fixed-shape tensors (0-d scalars,
    kernels zero-padded to 21x21) so that the default collate stacks them; it always includes an int64 ``seed``
    that ``apply`` turns into per-sample generators for the noise realisations. ``apply`` runs on the device on a
    batch ``gt [B, 3, H, W]`` in ``[0, 1]`` with the collated params (leading dim ``B``, same device) and returns
    the LQ ``[B, 3, H/scale, W/scale]`` (or ``[B, 3, H, W]`` when ``resize_back``) in ``[0, 1]``, quantised to
    8-bit levels before any resize back. Same params and input give bit-identical LQs on CPU.
    """

    scale: int
    resize_back: bool

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def apply(self, gt: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


def as_range(
    value: Sequence[float], name: str, low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """Validate a ``[min, max]`` pair from a config (lists, tuples, OmegaConf ``ListConfig``)."""
    vals = tuple(float(v) for v in value)
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ValueError(f"{name} must be [min, max] with min <= max, got {list(value)}")
    if (low is not None and vals[0] < low) or (high is not None and vals[1] > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {list(vals)}")
    return vals


def uniform(generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """0-d float32 uniform in ``[low, high)`` from ``generator`` (CPU)."""
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).to(torch.float32)


def draw_seed(generator: torch.Generator) -> torch.Tensor:
    """0-d int64 seed for the noise realisations of one sample."""
    return torch.randint(0, SEED_HIGH, (), generator=generator, dtype=torch.int64)


def batch_size(gt: torch.Tensor, params: Mapping[str, torch.Tensor]) -> int:
    """Check ``gt`` is ``[B, 3, H, W]`` and every param has leading dim ``B``; return ``B``."""
    if gt.ndim != 4 or gt.shape[1] != 3:
        raise ValueError(f"gt must be [B, 3, H, W], got {tuple(gt.shape)}")
    b = gt.shape[0]
    for key, val in params.items():
        if val.ndim == 0 or val.shape[0] != b:
            raise ValueError(f"param {key!r} must have leading dim {b} (collated), got {tuple(val.shape)}")
    return b


def lq_size(gt: torch.Tensor, scale: int) -> tuple[int, int]:
    """``(H // scale, W // scale)``; the GT must be a multiple of ``scale`` (crop it first)."""
    h, w = gt.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"GT size {h}x{w} is not a multiple of the scale {scale}; crop it first")
    return h // scale, w // scale
