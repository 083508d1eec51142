"""Colour fix: AdaIN and wavelet (a-trous) against float64 numpy references, on random and real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy_reference import to_torch

from fidesr.components import color_fix as cf

K1 = np.array([1.0, 2.0, 1.0]) / 4.0
KERNEL = np.outer(K1, K1)  # [1,2,1]x[1,2,1]/16


def np_adain(sr: np.ndarray, ref: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """sr, ref [C,H,W]."""
    ms, ss = sr.mean((1, 2), keepdims=True), np.sqrt(sr.var((1, 2), ddof=1, keepdims=True) + eps)
    mr, sr_ = ref.mean((1, 2), keepdims=True), np.sqrt(ref.var((1, 2), ddof=1, keepdims=True) + eps)
    return (sr - ms) / ss * sr_ + mr


def np_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """x [C,H,W]: 3x3 binomial with taps at offsets -radius, 0, +radius, edge padding."""
    h, w = x.shape[-2:]
    p = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    out = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out += KERNEL[i, j] * p[:, i * radius : i * radius + h, j * radius : j * radius + w]
    return out


def np_wavelet_fix(sr: np.ndarray, ref: np.ndarray, levels: int = 5) -> np.ndarray:
    def low(x):
        for i in range(levels):
            x = np_blur(x, 2**i)
        return x

    return sr - low(sr) + low(ref)  # high(sr) telescopes to sr - L_levels(sr)


def rand_pair(seed: int, b: int = 2, h: int = 48, w: int = 40):
    rng = np.random.default_rng(seed)
    sr = rng.uniform(0, 1, size=(b, 3, h, w)).astype(np.float32).astype(np.float64)
    ref = (0.6 * sr + 0.3 * rng.uniform(0, 1, size=(b, 3, h, w)) + 0.05).astype(np.float32).astype(np.float64)
    return sr, ref


def test_adain_matches_numpy_random():
    sr, ref = rand_pair(0)
    out = cf.adain_color_fix(to_torch(sr), to_torch(ref))
    for i in range(2):
        torch.testing.assert_close(out[i], to_torch(np_adain(sr[i], ref[i])), atol=1e-5, rtol=0)


def test_adain_matches_reference_statistics():
    sr, ref = rand_pair(1)
    out = cf.adain_color_fix(to_torch(sr), to_torch(ref)[..., :20, :30])  # the reference may differ in size
    r = to_torch(ref)[..., :20, :30]
    torch.testing.assert_close(out.mean((2, 3)), r.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((2, 3)), r.std((2, 3)), atol=1e-4, rtol=1e-3)


def test_wavelet_blur_of_impulse_is_dilated_kernel():
    x = torch.zeros(1, 3, 9, 9)
    x[:, :, 4, 4] = 1.0
    for radius in (1, 2, 4):
        out = cf.wavelet_blur(x, radius)
        expected = torch.zeros(9, 9)
        for i, dy in enumerate((-radius, 0, radius)):
            for j, dx in enumerate((-radius, 0, radius)):
                expected[4 + dy, 4 + dx] = float(KERNEL[i, j])
        for c in range(3):
            torch.testing.assert_close(out[0, c], expected)


def test_wavelet_blur_replicate_padding_by_hand():
    """A ramp along x keeps its interior (the kernel is symmetric), the border sees replicated values."""
    x = torch.arange(6.0).repeat(4, 1)[None, None]
    out = cf.wavelet_blur(x, 1)[0, 0, 0]
    # col 0: (0 + 2*0 + 1)/4 = 0.25; interior: unchanged; col 5: (4 + 2*5 + 5)/4 = 4.75
    torch.testing.assert_close(out, torch.tensor([0.25, 1.0, 2.0, 3.0, 4.0, 4.75]))


def test_wavelet_decomposition_sums_to_input():
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    high, low = cf.wavelet_decomposition(x, levels=5)
    torch.testing.assert_close(high + low, x, atol=1e-6, rtol=0)
    const = torch.full((1, 3, 20, 20), 0.3)
    h2, l2 = cf.wavelet_decomposition(const)
    torch.testing.assert_close(l2, const)
    assert h2.abs().max() < 1e-6


@pytest.mark.parametrize("levels", [1, 3, 5])
def test_wavelet_fix_matches_numpy_random(levels):
    sr, ref = rand_pair(3)
    out = cf.wavelet_color_fix(to_torch(sr), to_torch(ref), levels=levels)
    for i in range(2):
        torch.testing.assert_close(out[i], to_torch(np_wavelet_fix(sr[i], ref[i], levels)), atol=1e-5, rtol=0)


def test_wavelet_fix_with_itself_is_identity():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(cf.wavelet_color_fix(x, x), x, atol=1e-6, rtol=0)


def test_color_fix_matches_numpy_realsr(realsr_osediff, realsr_lq):
    sr = realsr_osediff
    ref_t = F.interpolate(torch.from_numpy(realsr_lq), scale_factor=4, mode="bicubic", align_corners=False)
    ref = ref_t.numpy()
    ad = cf.color_fix(to_torch(sr), to_torch(ref), "adain")
    wv = cf.color_fix(to_torch(sr), to_torch(ref), "wavelet")
    for i in range(len(sr)):
        torch.testing.assert_close(ad[i], to_torch(np_adain(sr[i], ref[i])), atol=1e-5, rtol=0)
        torch.testing.assert_close(wv[i], to_torch(np_wavelet_fix(sr[i], ref[i])), atol=1e-5, rtol=0)


def test_dispatch_dtype_and_errors():
    sr, ref = (to_torch(a) for a in rand_pair(5))
    assert cf.color_fix(sr, ref, "none") is sr and cf.color_fix(sr, ref, "nofix") is sr
    assert cf.color_fix(sr.half(), ref.half(), "adain").dtype == torch.float16
    assert cf.color_fix(sr.half(), ref.half(), "wavelet").dtype == torch.float16
    with pytest.raises(ValueError):
        cf.color_fix(sr, ref, "histogram")
    with pytest.raises(ValueError):
        cf.wavelet_color_fix(sr, ref[..., :-1])
    with pytest.raises(ValueError):
        cf.adain_color_fix(sr, ref[:, :2])


def test_adain_uses_unbiased_std():
    """With different sizes the n/(n-1) corrections do not cancel: a 2x2 SR against a 16x16 reference."""
    rng = np.random.default_rng(6)
    sr = rng.uniform(0, 1, size=(1, 3, 2, 2)).astype(np.float32).astype(np.float64)
    ref = rng.uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32).astype(np.float64)
    out = cf.adain_color_fix(to_torch(sr), to_torch(ref))
    torch.testing.assert_close(out[0], to_torch(np_adain(sr[0], ref[0])), atol=1e-5, rtol=0)
