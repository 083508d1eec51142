"""High-frequency error of residuals (the paper's LRRB analysis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy_reference import cosine, np_filter, np_mask, to_torch

from fidesr.components import hf_error as hfe
from fidesr.components.lfim import butterworth_lowpass


def np_hf_error(r: np.ndarray, ideal: np.ndarray, rc: float = 0.32, grid: str = "official") -> np.ndarray:
    hp = np_filter(r - ideal, 1 - np_mask(*r.shape[-2:], rc, 2, grid))
    return (hp**2).reshape(r.shape[0], -1).mean(1)


@pytest.mark.parametrize("grid", ["official", "centered"])
def test_matches_numpy(grid):
    g = torch.Generator().manual_seed(0)
    r, ideal = torch.randn(3, 4, 16, 12, generator=g), torch.randn(3, 4, 16, 12, generator=g)
    out = hfe.high_frequency_error(r, ideal, grid=grid)
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(
        out,
        to_torch(np_hf_error(r.double().numpy(), ideal.double().numpy(), grid=grid)),
        atol=1e-6,
        rtol=1e-5,
    )


def test_by_hand():
    ideal = torch.randn(2, 4, 16, 16)
    assert torch.equal(hfe.high_frequency_error(ideal, ideal), torch.zeros(2))
    # a constant (DC) offset has no high-frequency content: HP gain at DC is exactly 0
    assert hfe.high_frequency_error(ideal + 0.7, ideal).abs().max() < 1e-10
    # a single frequency of amplitude 2 at bin (3, 5): error = (2 * (1 - LP[3, 5]))^2 * mean(cos^2) = .. * 1/2
    wave = 2 * cosine(16, 16, 3, 5).float()
    gain = 1 - butterworth_lowpass(16, 16, 0.32)[3, 5].item()
    expected = (2 * gain) ** 2 / 2
    err = hfe.high_frequency_error(ideal + wave, ideal)
    torch.testing.assert_close(err, torch.full((2,), expected), atol=1e-5, rtol=1e-5)
    assert 0 < gain < 1 and math.isfinite(expected)


def test_lrrb_reduction_dict():
    g = torch.Generator().manual_seed(1)
    z_l, z_h = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    ideal = hfe.ideal_residual(z_l, z_h)
    torch.testing.assert_close(ideal, z_l - z_h)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    r_before, r_after = ideal + noise, ideal + 0.9 * noise  # after = 10 % less error amplitude
    out = hfe.lrrb_hf_reduction(r_before, r_after, ideal)
    before = hfe.high_frequency_error(r_before, ideal).mean().item()
    assert out["hf_error_before"] == pytest.approx(before)
    # HP is linear: the error scales by 0.9^2
    assert out["hf_error_after"] == pytest.approx(0.81 * before, rel=1e-5)
    assert out["reduction_pct"] == pytest.approx(19.0, abs=1e-3)


def test_meter_pools_over_batches():
    g = torch.Generator().manual_seed(2)
    ideal = torch.randn(5, 4, 8, 8, generator=g)
    rb, ra = ideal + torch.randn(5, 4, 8, 8, generator=g), ideal + 0.5 * torch.randn(5, 4, 8, 8, generator=g)
    meter = hfe.HFErrorMeter()
    with pytest.raises(RuntimeError):
        meter.compute()
    meter.update(rb[:2], ra[:2], ideal[:2])
    meter.update(rb[2:], ra[2:], ideal[2:])
    assert meter.compute() == pytest.approx(hfe.lrrb_hf_reduction(rb, ra, ideal))
