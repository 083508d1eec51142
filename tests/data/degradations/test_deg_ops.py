"""Batched degradation ops: per-sample kernels, noise, JPEG quality, 8-bit rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fidesr.data.degradations import kernels as K
from fidesr.data.degradations import ops


def _image(b: int = 2, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(x, 3, 1, 1)  # some spatial correlation, like a real image


def test_filter2d_is_per_sample_reflect_correlation() -> None:
    x = _image(3)
    kernels = torch.stack(
        [
            K.pad_kernel(K.gaussian_kernel(7, 1.2)),
            K.pad_kernel(K.gaussian_kernel(13, 2.0, 0.5, theta=0.4)),
            K.pad_kernel(K.sinc_kernel(9, 1.5)),
        ]
    ).float()
    out = ops.filter2d(x, kernels)
    for i in range(3):
        ref = F.conv2d(F.pad(x[i : i + 1], (10,) * 4, mode="reflect").transpose(0, 1), kernels[i][None, None])
        assert torch.allclose(out[i : i + 1], ref.transpose(0, 1), atol=1e-6)
    # Dropping the zero border (trim) is the same function.
    assert torch.allclose(out, ops.filter2d(x, kernels, trim=False), atol=1e-6)
    assert ops.trim_kernels(kernels).shape[-1] == 13


def test_filter2d_pulse_is_identity() -> None:
    x = _image(2)
    assert torch.equal(ops.filter2d(x, K.pulse_kernel().float()), x)


def test_gaussian_noise_sigma_gray_and_seeding() -> None:
    x = torch.full((2, 3, 64, 64), 0.5)
    sigma, gray = torch.tensor([10.0, 20.0]), torch.tensor([False, True])
    gens = ops.generators_from_seeds(torch.tensor([1, 2]), "cpu")
    noisy = ops.add_gaussian_noise(x, sigma, gray, gens) - x
    assert abs(float(noisy[0].std()) * 255 - 10) < 0.6
    assert abs(float(noisy[1].std()) * 255 - 20) < 1.2
    assert torch.equal(noisy[1, 0], noisy[1, 2]) and not torch.equal(noisy[0, 0], noisy[0, 2])
    again = ops.add_gaussian_noise(x, sigma, gray, ops.generators_from_seeds(torch.tensor([1, 2]), "cpu")) - x
    assert torch.equal(noisy, again)
    # A sample's noise depends on its own seed only, not on its batch-mates.
    alone = ops.add_gaussian_noise(
        x[1:], sigma[1:], gray[1:], ops.generators_from_seeds(torch.tensor([2]), "cpu")
    )
    assert torch.equal(alone - x[1:], noisy[1:])


def test_poisson_noise_levels_gray_and_scale() -> None:
    x = _image(2, 64, 64)
    gens = ops.generators_from_seeds(torch.tensor([3, 4]), "cpu")
    out = ops.add_poisson_noise(x, torch.tensor([1.0, 2.0]), torch.tensor([False, True]), gens)
    noise = out - x
    assert torch.allclose(noise[1, 0], noise[1, 1], atol=1e-6)  # grey: one realisation for all channels
    assert not torch.allclose(noise[0, 0], noise[0, 1], atol=1e-3)
    assert abs(float(noise.mean())) < 0.01
    zero = ops.add_poisson_noise(
        x, torch.zeros(2), torch.tensor([False, True]), ops.generators_from_seeds(torch.tensor([3, 4]), "cpu")
    )
    assert torch.equal(zero, x)


def test_jpeg_quality_is_per_sample() -> None:
    x = F.avg_pool2d(_image(1, 48, 40), 5, 1, 2).expand(3, -1, -1, -1).contiguous()
    out = ops.jpeg(x, torch.tensor([10.0, 95.0, 10.0]))
    err = (out - x).abs().flatten(1).mean(1)
    assert err[0] > 2 * err[1]  # quality 10 loses more than quality 95
    assert torch.allclose(out[0], out[2], atol=1e-6)
    single = ops.jpeg(x[1:2], torch.tensor([95.0]))
    assert torch.allclose(out[1:2], single, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1 and out.shape == x.shape  # 48x40: not a multiple of 16


def test_quantize_8bit_levels() -> None:
    x = torch.linspace(-0.1, 1.1, 1000)
    q = ops.quantize_8bit(x)
    assert q.min() == 0 and q.max() == 1
    assert torch.equal((q * 255).round(), q * 255)


def test_resize_modes() -> None:
    x = _image(1, 40, 40)
    for mode in ops.RESIZE_MODES:
        assert ops.resize(x, size=(10, 12), mode=mode).shape == (1, 3, 10, 12)
    with pytest.raises(ValueError):
        ops.resize(x, size=(10, 10), mode="lanczos")


@pytest.mark.parametrize("quality", [10, 30, 60])
def test_jpeg_matches_libjpeg(quality: int) -> None:
    """Same tables, DCT and subsampling as libjpeg (via OpenCV): the decoded images agree far better than
    either agrees with the input (remaining differences: chroma upsampling, nearest here as in BasicSR, libjpeg's
    "fancy" triangle filter there; integer DCT; rounding). Near-lossless qualities are left out: there the
    chroma upsampling difference dominates on this saturated synthetic image."""
    cv2 = pytest.importorskip("cv2")
    img = F.interpolate(_image(1, 12, 10, seed=3), size=(72, 56), mode="bicubic").clamp(0, 1)
    img = (img * 255).round() / 255
    arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", arr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    ref = torch.from_numpy(cv2.imdecode(enc, 1)[..., ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    ours = ops.jpeg(img, torch.tensor([float(quality)]))

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))

    assert psnr(ours, ref) > psnr(ref, img) + 3
    assert abs(psnr(ours, img) - psnr(ref, img)) < 1.5
