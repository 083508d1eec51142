"""LFIM: Butterworth masks (official and centred grids), filters, gates and the full injection.

The reference is float64 numpy (explicit loops for the masks, ``np.fft`` for the filters, the DAW numpy
detail map from ``test_daw``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy_reference import cosine, np_detail, np_filter, np_mask, np_pnorm, np_resize_bilinear, to_torch

from fidesr.components import lfim


# ----------------------------------------------------------------------------- numpy reference
def np_lfim(
    z, z_lq, r, lq, lf, hf, grid="official", rc_lf=0.10, rc_hf=0.32, tau=0.8, sharp=10.0, gamma=1.2, mr=0.5
):
    """Straight transcription of the official inference code (single image, float64)."""
    if lf <= 0 and hf <= 0:
        return z
    c, h, w = z.shape
    m_sp = np.clip(np_resize_bilinear(np_detail(lq * 0.5 + 0.5), h, w), 0, 1)
    lp_mask = np_mask(h, w, rc_lf, 2, grid)
    hp_mask = 1 - np_mask(h, w, rc_hf, 2, grid)
    lp_lq = np_filter(z_lq, lp_mask)
    num = np.sqrt(np.maximum((lp_lq**2).sum(axis=(1, 2)), 1e-12))
    den = np.sqrt(np.maximum((z_lq**2).sum(axis=(1, 2)), 1e-12))
    ratio = np.clip(num / den, 0, 1)
    m_ch = (1 / (1 + np.exp(-sharp * (ratio - tau))))[:, None, None]
    zl = zf = z
    if lf > 0:
        a = np.abs(r)
        rmap = np_pnorm(0.8 * a.mean(0) + 0.2 * a.std(0, ddof=1))
        m = np_pnorm((1 - m_sp) * rmap) ** gamma
        zl = z + lf * m * m_ch * np_filter(z, lp_mask)
    if hf > 0:
        d = np_filter(z, hp_mask) - np_filter(z_lq, hp_mask)
        zf = z + hf * m_sp**gamma * (1 - m_ch) * d
    if lf > 0 and hf > 0:
        return mr * zl + (1 - mr) * zf
    return zl if lf > 0 else zf


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("grid", ["official", "centered"])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 9), (64, 48), (1, 8), (7, 1)])
def test_mask_matches_reference(grid, h, w):
    for rc, n in ((0.10, 2), (0.32, 2), (0.3, 1), (0.5, 4)):
        mask = lfim.butterworth_lowpass(h, w, rc, n, grid)
        assert mask.shape == (h, w // 2 + 1) and mask.dtype == torch.float32
        torch.testing.assert_close(mask, to_torch(np_mask(h, w, rc, n, grid)), atol=1e-6, rtol=0)
        assert mask[0, 0] == 1.0


def test_official_mask_values_by_hand():
    m = lfim.butterworth_lowpass(16, 16, 0.3, 2, "official")
    # (ky, kx) = (3, 2): yy = 3/15, xx = 2/8, r = sqrt(0.04 + 0.0625) / sqrt(2) = 0.226385
    r = math.sqrt(0.2**2 + 0.25**2) / math.sqrt(2)
    assert m[3, 2].item() == pytest.approx(1 / (1 + (r / 0.3) ** 4), abs=1e-6)
    assert m[3, 2].item() == pytest.approx(0.755129, abs=1e-5)
    # last row (really the frequency -1) and last column (Nyquist) give r = 1: the smallest gain
    assert m[15, 8].item() == pytest.approx(1 / (1 + (1 / 0.3) ** 4), abs=1e-7)
    assert m.argmin().item() == m.numel() - 1


def test_centered_mask_values_by_hand():
    m = lfim.butterworth_lowpass(16, 16, 0.3, 2, "centered")
    # rows 3 and 13 are the frequencies +3/16 and -3/16: the same radius sqrt(0.375^2 + 0.25^2) / sqrt(2)
    r = math.sqrt((3 / 8) ** 2 + (2 / 8) ** 2) / math.sqrt(2)
    for ky in (3, 13):
        assert m[ky, 2].item() == pytest.approx(1 / (1 + (r / 0.3) ** 4), abs=1e-6)
    # Nyquist corner (row 8 = -0.5, column 8 = +0.5) has radius 1
    assert m[8, 8].item() == pytest.approx(1 / (1 + (1 / 0.3) ** 4), abs=1e-7)


def test_invalid_grid_and_cutoff():
    with pytest.raises(ValueError):
        lfim.butterworth_lowpass(8, 8, 0.3, grid="shifted")
    with pytest.raises(ValueError):
        lfim.butterworth_lowpass(8, 8, 0.0)
    with pytest.raises(ValueError):
        lfim.LatentFrequencyInjection(grid="nope")


# ----------------------------------------------------------------------------- filters
@pytest.mark.parametrize("grid", ["official", "centered"])
def test_single_frequency_gain(grid):
    """A latent holding one spatial frequency (0 < kx < W/2) comes out scaled by the mask at that bin."""
    h, w = 16, 16
    mask = lfim.butterworth_lowpass(h, w, 0.3, 2, grid)
    for ky, kx in ((0, 1), (3, 2), (13, 2), (8, 5), (1, 7)):
        z = cosine(h, w, ky, kx).float().expand(1, 4, h, w)
        lp = lfim.lowpass(z, 0.3, 2, grid)
        hp = lfim.highpass(z, 0.3, 2, grid)
        torch.testing.assert_close(lp, mask[ky, kx] * z, atol=1e-5, rtol=0)
        torch.testing.assert_close(hp, (1 - mask[ky, kx]) * z, atol=1e-5, rtol=0)
        torch.testing.assert_close(lp + hp, z, atol=1e-5, rtol=0)


def test_official_grid_treats_negative_vertical_frequencies_as_high():
    """The documented quirk: frequency -3 (row 13) is attenuated much more than +3 (row 3)."""
    h = w = 16
    plus, minus = cosine(h, w, 3, 2).float()[None, None], cosine(h, w, -3, 2).float()[None, None]
    gain = lambda z, g: (lfim.lowpass(z, 0.3, 2, g) * z).sum() / (z * z).sum()  # noqa: E731
    assert gain(plus, "official") > 0.75 and gain(minus, "official") < 0.05
    assert gain(plus, "centered") == pytest.approx(gain(minus, "centered").item(), abs=1e-6)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 9)])
def test_full_spectrum_symmetry(h, w):
    """Full 2-D transfer function = fft2 of the impulse response. Centred grid: mask(ky, kx) ==
    mask(-ky, kx) == mask(ky, -kx) (radial); official grid: not symmetric in ky."""
    delta = torch.zeros(1, 1, h, w, dtype=torch.float64)
    delta[..., 0, 0] = 1.0
    neg_y = (-torch.arange(h)) % h
    neg_x = (-torch.arange(w)) % w
    for grid, symmetric in (("centered", True), ("official", False)):
        full = torch.fft.fft2(lfim.lowpass(delta.float(), 0.3, 2, grid).double())[0, 0]
        m = full.real
        flip_y = m[neg_y]
        if symmetric:
            assert full.imag.abs().max() < 1e-5  # an even, real impulse response
            torch.testing.assert_close(flip_y, m, atol=1e-5, rtol=0)
            torch.testing.assert_close(m[:, neg_x], m, atol=1e-5, rtol=0)
            half = lfim.butterworth_lowpass(h, w, 0.3, 2, grid).double()
            torch.testing.assert_close(m[:, : w // 2 + 1], half, atol=1e-5, rtol=0)
        else:
            assert (flip_y - m).abs().max() > 0.1


@pytest.mark.parametrize("grid", ["official", "centered"])
def test_filters_match_numpy_fft(grid):
    z = torch.randn(2, 4, 24, 20, generator=torch.Generator().manual_seed(0))
    zn = z.double().numpy()
    for rc in (0.1, 0.32):
        mask = np_mask(24, 20, rc, 2, grid)
        torch.testing.assert_close(
            lfim.lowpass(z, rc, 2, grid), to_torch(np_filter(zn, mask)), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            lfim.highpass(z, rc, 2, grid), to_torch(np_filter(zn, 1 - mask)), atol=1e-5, rtol=0
        )


def test_filters_keep_dtype():
    z = torch.randn(1, 4, 8, 8).half()
    assert lfim.lowpass(z, 0.1).dtype == torch.float16 and lfim.highpass(z, 0.32).dtype == torch.float16


# ----------------------------------------------------------------------------- gates
def test_channel_gate_by_hand():
    z = torch.zeros(1, 3, 8, 8)
    z[0, 0] = 2.5  # constant: all energy at DC where LP = 1 -> ratio 1
    z[0, 2] = torch.tensor([[(-1.0) ** (x + y) for x in range(8)] for y in range(8)])  # checkerboard
    gate = lfim.channel_gate(z, cutoff=0.10, order=2, tau=0.8, sharpness=10.0)
    assert gate.shape == (1, 3, 1, 1)
    s2 = 1 / (1 + math.exp(-2.0))  # sigmoid(10 * (1 - 0.8))
    assert gate[0, 0].item() == pytest.approx(s2, abs=1e-6)
    assert gate[0, 1].item() == pytest.approx(s2, abs=1e-6)  # all-zero channel: 1e-6 / 1e-6 clamp -> 1
    # checkerboard = bin (4, 4): official r = hypot(4/7, 1) / sqrt(2); ratio = LP gain there
    r = math.hypot(4 / 7, 1.0) / math.sqrt(2)
    ratio = 1 / (1 + (r / 0.1) ** 4)
    assert gate[0, 2].item() == pytest.approx(1 / (1 + math.exp(-10 * (ratio - 0.8))), abs=1e-6)


def test_spatial_gate_rescales_lq_to_unit_range():
    lq = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gate = lfim.spatial_gate(lq, (8, 6))
    assert gate.shape == (2, 1, 8, 6) and 0 <= gate.min() and gate.max() <= 1
    for i in range(2):
        ref = np.clip(np_resize_bilinear(np_detail(lq[i].double().numpy() * 0.5 + 0.5), 8, 6), 0, 1)
        torch.testing.assert_close(gate[i, 0], to_torch(ref), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- injection
def rand_inputs(seed: int, b: int = 2, h: int = 16, w: int = 12):
    g = torch.Generator().manual_seed(seed)
    z_lq = torch.randn(b, 4, h, w, generator=g)
    # a smooth-ish LQ latent (so the channel gate is not saturated) plus a residual
    z_lq = z_lq + 2 * F.avg_pool2d(torch.randn(b, 4, h, w, generator=g), 5, 1, 2, count_include_pad=False)
    r = 0.3 * torch.randn(b, 4, h, w, generator=g)
    lq = torch.rand(b, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    return z_lq - r, z_lq, r, lq


def test_identity_when_both_strengths_zero():
    z, z_lq, r, lq = rand_inputs(2)
    assert lfim.LatentFrequencyInjection(lf_scale=0, hf_scale=0)(z, z_lq, r, lq) is z
    assert lfim.LatentFrequencyInjection()(z, z_lq, r, lq, lf_scale=0.0, hf_scale=0.0) is z
    assert not torch.equal(lfim.LatentFrequencyInjection()(z, z_lq, r, lq), z)


@pytest.mark.parametrize("grid", ["official", "centered"])
@pytest.mark.parametrize(("lf", "hf"), [(0.2, 0.0), (0.0, 0.2), (0.2, 0.2), (0.5, 0.1)])
def test_injection_matches_reference(grid, lf, hf):
    z, z_lq, r, lq = rand_inputs(3)
    out = lfim.LatentFrequencyInjection(grid=grid)(z, z_lq, r, lq, lf_scale=lf, hf_scale=hf)
    assert out.shape == z.shape and out.dtype == z.dtype
    for i in range(2):
        args = [t[i].double().numpy() for t in (z, z_lq, r, lq)]
        torch.testing.assert_close(out[i], to_torch(np_lfim(*args, lf, hf, grid)), atol=1e-5, rtol=0)


def test_merge_is_convex_combination_of_branches():
    z, z_lq, r, lq = rand_inputs(4)
    m = lfim.LatentFrequencyInjection(merge_ratio=0.3)
    both = m(z, z_lq, r, lq)
    lf_only = m(z, z_lq, r, lq, hf_scale=0.0)
    hf_only = m(z, z_lq, r, lq, lf_scale=0.0)
    torch.testing.assert_close(both, 0.3 * lf_only + 0.7 * hf_only, atol=1e-6, rtol=0)
    # per-call overrides do not change the module's settings
    assert (m.lf_scale, m.hf_scale) == (0.2, 0.2)
    with pytest.raises(ValueError):
        m(z, z_lq, r, lq, lf_scale=-0.1)


def test_injection_matches_reference_realsr(realsr_lq):
    lq_small = torch.from_numpy(realsr_lq).float()
    lq = F.interpolate(lq_small * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    # stand-in latents derived from the image (no VAE here): 8x8 pooled RGB + grey, scaled like SD latents
    pooled = F.avg_pool2d(lq, 8)
    z_lq = torch.cat([pooled, pooled.mean(1, keepdim=True)], 1) * 2.0
    r = 0.2 * torch.randn(z_lq.shape, generator=torch.Generator().manual_seed(5))
    z = z_lq - r
    out = lfim.LatentFrequencyInjection()(z, z_lq, r, lq)
    for i in range(len(lq)):
        args = [t[i].double().numpy() for t in (z, z_lq, r, lq)]
        torch.testing.assert_close(out[i], to_torch(np_lfim(*args, 0.2, 0.2)), atol=1e-5, rtol=0)
    assert (out - z).abs().max() > 1e-3  # the edit is not a no-op on real content


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.1])
def test_strengths_are_finite_and_non_negative(value):
    """NaN used to pass (``NaN > 0`` is false: the branch silently switched off), Inf made the latent
    non-finite; both are refused, in the module and per call, with the key named."""
    from fidesr.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=f"lf_scale must be a finite number >= 0.*got {value}"):
        lfim.LatentFrequencyInjection(lf_scale=value)
    with pytest.raises(ConfigValueError, match="hf_scale must be a finite number"):
        lfim.LatentFrequencyInjection(hf_scale=value)
    z, z_lq, r, lq = rand_inputs(2)
    with pytest.raises(ConfigValueError, match="hf_scale"):
        lfim.LatentFrequencyInjection()(z, z_lq, r, lq, hf_scale=value)
