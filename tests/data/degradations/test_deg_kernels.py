"""Blur kernels: normalisation, sizes, shapes against closed forms, sampling frequencies."""

from __future__ import annotations

import math

import pytest
import torch

from fidesr.data.degradations import kernels as K

SIZES = K.KERNEL_SIZES


def _family(name: str, size: int) -> torch.Tensor:
    aniso = {"sigma_y": 0.7, "theta": 0.6} if name.endswith("aniso") else {}
    if name in ("iso", "aniso"):
        return K.gaussian_kernel(size, 1.8, **aniso)
    if name.startswith("generalized"):
        return K.generalized_gaussian_kernel(size, 1.8, 0.7, **aniso)
    if name.startswith("plateau"):
        return K.plateau_kernel(size, 1.8, 1.5, **aniso)
    if name == "sinc":
        return K.sinc_kernel(size, 1.3)
    return K.pulse_kernel(size)


@pytest.mark.parametrize("name", K.KERNEL_TYPES)
@pytest.mark.parametrize("size", SIZES)
def test_every_family_is_normalised_and_sized(name: str, size: int) -> None:
    kernel = _family(name, size)
    assert kernel.shape == (size, size)
    assert abs(float(kernel.sum()) - 1.0) < 1e-6
    padded = K.pad_kernel(kernel).to(torch.float32)
    assert padded.shape == (K.PAD_TO, K.PAD_TO)
    assert abs(float(padded.sum()) - 1.0) < 1e-6
    # Point symmetry k(x) = k(-x): correlation and convolution agree (BasicSR correlates).
    assert torch.allclose(kernel, kernel.flip(0, 1), atol=1e-12)
    if name != "sinc":
        assert (kernel >= 0).all()


def test_isotropic_gaussian_is_the_separable_closed_form() -> None:
    ax = torch.arange(-5, 6, dtype=torch.float64)
    g = torch.exp(-(ax**2) / (2 * 1.3**2))
    expected = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(K.gaussian_kernel(11, 1.3), expected, atol=1e-12)


def test_anisotropic_rotation_by_quarter_turn_transposes() -> None:
    a = K.gaussian_kernel(15, 2.5, 0.6, theta=0.0)
    b = K.gaussian_kernel(15, 2.5, 0.6, theta=math.pi / 2)
    assert torch.allclose(a.T, b, atol=1e-12)
    assert a[7, :].sum() > a[:, 7].sum()  # sigma_x > sigma_y: spread along x (columns)


def test_generalized_with_beta_one_is_gaussian_and_plateau_is_heavy_tailed() -> None:
    assert torch.allclose(K.generalized_gaussian_kernel(13, 1.5, 1.0), K.gaussian_kernel(13, 1.5), atol=1e-12)
    plateau, gauss = K.plateau_kernel(21, 1.5, 1.0), K.gaussian_kernel(21, 1.5)
    assert plateau[0, 10] > gauss[0, 10]


def test_sinc_centre_and_cutoff() -> None:
    k = K.sinc_kernel(21, math.pi)  # cut-off at Nyquist ~ near-identity
    assert k[10, 10] == k.max()
    wide, narrow = K.sinc_kernel(21, math.pi / 5), K.sinc_kernel(21, math.pi)
    assert wide[10, 10] < narrow[10, 10]  # lower cut-off = more blur


@pytest.mark.parametrize("sinc_prob", [0.0, 1.0])
def test_random_blur_kernel_padded_support_matches_size(sinc_prob: float) -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        kernel, info = K.random_blur_kernel(
            gen, K.KERNEL_TYPES[:6], [1] * 6, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), sinc_prob
        )
        assert kernel.shape == (21, 21) and kernel.dtype == torch.float32
        assert abs(float(kernel.sum()) - 1.0) < 1e-6
        size = info["size"]
        assert size in SIZES
        pad = (21 - size) // 2
        border = torch.ones(21, 21, dtype=torch.bool)
        border[pad : 21 - pad, pad : 21 - pad] = False
        assert (kernel[border] == 0).all()
        assert (K.KERNEL_TYPES[info["type"]] == "sinc") == (sinc_prob == 1.0)


def test_random_mixed_kernel_follows_the_type_probabilities_and_is_seeded() -> None:
    probs = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    gen = torch.Generator().manual_seed(0)
    n = 1500
    counts = torch.zeros(6)
    for _ in range(n):
        _, info = K.random_mixed_kernel(gen, K.KERNEL_TYPES[:6], probs, 7, (0.2, 3), (0.5, 4), (1, 2))
        counts[info["type"]] += 1
        assert 0.2 <= info["sigma_x"] <= 3 and 0.2 <= info["sigma_y"] <= 3
    freq = counts / n
    for f, p in zip(freq.tolist(), probs, strict=True):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    a, _ = K.random_mixed_kernel(
        torch.Generator().manual_seed(5), ["aniso"], [1], 21, (0.2, 3), (0.5, 4), (1, 2)
    )
    b, _ = K.random_mixed_kernel(
        torch.Generator().manual_seed(5), ["aniso"], [1], 21, (0.2, 3), (0.5, 4), (1, 2)
    )
    assert torch.equal(a, b)


def test_final_sinc_is_pulse_or_sinc() -> None:
    pulse, info = K.random_final_sinc(torch.Generator().manual_seed(0), prob=0.0)
    assert K.KERNEL_TYPES[info["type"]] == "pulse" and pulse[10, 10] == 1 and pulse.sum() == 1
    sinc, info = K.random_final_sinc(torch.Generator().manual_seed(0), prob=1.0)
    assert K.KERNEL_TYPES[info["type"]] == "sinc" and abs(float(sinc.sum()) - 1) < 1e-6


def test_even_kernel_size_is_rejected() -> None:
    with pytest.raises(ValueError):
        K.gaussian_kernel(8, 1.0)
