"""Batched image operations of the degradation pipelines (pure torch, no global RNG).

Every function takes images ``[B, C, H, W]`` float in ``[0, 1]`` (values may leave the range between steps, as in
Real-ESRGAN, which clamps only where it says so) and per-sample parameters with leading dimension ``B`` on the
same device. Randomness comes only from explicit per-sample :class:`torch.Generator` objects (see
:func:`generators_from_seeds`), so a sample's noise does not depend on which other samples share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as torchvision's rgb_to_grayscale used by BasicSR

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
"""Resize modes drawn by Real-ESRGAN; params store the index into this tuple (int64)."""


def luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of ``[B, 3, H, W]`` -> ``[B, 1, H, W]`` (same range as the input)."""
    return (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def generators_from_seeds(seeds: torch.Tensor, device: torch.device | str) -> list[torch.Generator]:
    """One generator per sample, on ``device``, seeded with ``seeds[i]`` (int64 ``[B]``).

    The noise of a sample then depends only on its own seed. CPU and CUDA generators produce different streams
    for the same seed (different algorithms), so LQs are bit-reproducible per device type, not across them.
    """
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds.reshape(-1).tolist()]


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[0, 1]`` and round to 8-bit levels (``round(x * 255) / 255``), as Real-ESRGAN's final LQ."""
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


def filter2d(x: torch.Tensor, kernel: torch.Tensor, trim: bool = True) -> torch.Tensor:
    """Correlate each sample with its own kernel, reflect padding (BasicSR's ``filter2D``).

    Args:
        x: ``[B, C, H, W]``.
        kernel: ``[B, k, k]`` (odd ``k``, typically 21 with zero borders) or ``[k, k]`` shared.
        trim: drop the all-zero border rows/columns shared by the whole batch before filtering. Zero taps
            contribute nothing, so the result is the same function (up to float summation order); a 7x7
            kernel padded to 21x21 then costs 49 instead of 441 multiply-adds per pixel.

    Returns:
        ``[B, C, H, W]``.
    """
    if kernel.ndim == 2:
        kernel = kernel[None].expand(x.shape[0], -1, -1)
    if trim:
        kernel = trim_kernels(kernel)
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    if k == 1:
        return x * kernel.reshape(-1, 1, 1, 1).to(device=x.device, dtype=x.dtype)
    # Reflect padding needs pad < size; tiny images (only reachable with extreme resize ranges) fall back.
    r = k // 2
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
    # One depthwise convolution for the whole batch: sample i's channels use kernel i (groups = B * C).
    weight = kernel.to(device=x.device, dtype=x.dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(x.reshape(1, b * c, h + 2 * r, w + 2 * r), weight, groups=b * c).view(b, c, h, w)


def trim_kernels(kernel: torch.Tensor) -> torch.Tensor:
    """``[B, k, k]`` -> ``[B, k', k']``: remove the zero border common to all kernels (``k'`` odd, centred)."""
    k = kernel.shape[-1]
    nonzero = (kernel != 0).any(dim=0)  # [k, k]
    if not bool(nonzero.any()):
        return kernel
    rows = nonzero.any(dim=1).nonzero().flatten()
    cols = nonzero.any(dim=0).nonzero().flatten()
    c = k // 2
    r = int(torch.stack([c - rows.min(), rows.max() - c, c - cols.min(), cols.max() - c]).max())
    return kernel[:, c - r : c + r + 1, c - r : c + r + 1]


def resize(
    x: torch.Tensor,
    size: tuple[int, int] | None = None,
    scale_factor: float | None = None,
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """``F.interpolate`` with Real-ESRGAN's conventions (``align_corners=False``, no antialias by default)."""
    if mode not in RESIZE_MODES and mode != "nearest":
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, **kwargs)


def add_gaussian_noise(
    x: torch.Tensor,
    sigma: torch.Tensor,
    gray: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Additive Gaussian noise, colour or grey (one channel repeated) per sample; no clamping.

    Args:
        x: ``[B, 3, H, W]``.
        sigma: ``[B]`` standard deviation in 0..255 units.
        gray: ``[B]`` bool (or 0/1): grey noise for that sample.
        generators: ``B`` generators on ``x.device``; each draws ``1`` or ``3`` x ``H x W`` normals.
    """
    b, c, h, w = x.shape
    noise = []
    for i, gen in enumerate(generators):
        # Only the needed channels are drawn (Real-ESRGAN draws both and discards one; same distribution).
        ch = 1 if bool(gray[i]) else c
        noise.append(torch.randn((ch, h, w), generator=gen, device=x.device, dtype=x.dtype).expand(c, h, w))
    return x + torch.stack(noise) * (sigma.to(device=x.device, dtype=x.dtype) / 255.0).view(b, 1, 1, 1)


def add_poisson_noise(
    x: torch.Tensor,
    scale: torch.Tensor,
    gray: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Poisson (shot) noise as BasicSR's ``generate_poisson_noise_pt``; no clamping.

    The image is rounded to 8-bit levels, the number of distinct levels ``n`` gives
    ``vals = 2 ** ceil(log2(n))``, and the noise is ``(Poisson(img * vals) / vals - img) * scale``. Grey noise is
    computed on the luma image (ITU-R 601) and repeated over the channels.

    Args:
        x: ``[B, 3, H, W]``.
        scale: ``[B]`` noise scale.
        gray: ``[B]`` bool.
        generators: ``B`` generators on ``x.device``.
    """
    b, c, h, w = x.shape
    gray = gray.to(device=x.device, dtype=torch.bool).view(b, 1, 1, 1)
    src = torch.where(gray, luma(x).expand_as(x), x)
    src = torch.clamp((src * 255.0).round(), 0, 255)
    # Distinct 8-bit levels per sample with one bincount over the whole batch (sample i offset by 256 i).
    idx = src.to(torch.int64).flatten(1) + 256 * torch.arange(b, device=x.device)[:, None]
    n_levels = (torch.bincount(idx.flatten(), minlength=256 * b).view(b, 256) > 0).sum(dim=1)
    vals = torch.exp2(torch.ceil(torch.log2(n_levels.to(torch.float32)))).to(x.dtype).view(b, 1, 1, 1)
    src = src / 255.0
    out = []
    for i, gen in enumerate(generators):
        ch = 1 if bool(gray[i]) else c
        rate = src[i, :ch] * vals[i]
        out.append(torch.poisson(rate, generator=gen).expand(c, h, w))
    noisy = torch.stack(out) / vals
    return x + (noisy - src) * scale.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)


# Standard JPEG quantisation tables (ITU-T T.81 Annex K), natural order: row = vertical frequency.
_Q_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_Q_CHROMA = tuple(
    tuple(v)
    for v in (
        (17, 18, 24, 47) + (99,) * 4,
        (18, 21, 26, 66) + (99,) * 4,
        (24, 26, 56) + (99,) * 5,
        (47, 66) + (99,) * 6,
        *(((99,) * 8,) * 4),
    )
)
# JFIF full-range YCbCr (what JPEG files store).
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[64, 64]`` orthonormal 2-D DCT-II on row-major 8x8 blocks: ``vec(D X D^T) = kron(D, D) vec(X)``."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * torch.pi / 16) * (2 / 8) ** 0.5
    d[0] /= 2**0.5
    return torch.kron(d, d).to(device=device, dtype=dtype)


def jpeg_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's quality scaling of the standard tables: ``scale = 5000 / q`` (q < 50) or ``200 - 2 q``;
    ``T' = clamp(floor((T scale + 50) / 100), 1, 255)``. ``quality [B]`` -> luma and chroma tables ``[B, 64]``."""
    q = quality.to(torch.float64).clamp(1, 100)[:, None]
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    tables = []
    for base in (_Q_LUMA, _Q_CHROMA):
        t = torch.tensor(base, dtype=torch.float64, device=q.device).flatten()[None]
        tables.append(torch.floor((t * scale + 50) / 100).clamp(1, 255))
    return tables[0], tables[1]


def _block_codec(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Quantise the 8x8 DCT of ``plane [B, C, h, w]`` (h, w multiples of 8, level-shifted) with ``table [B, 64]``."""
    b, c, h, w = plane.shape
    blocks = plane.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, 64)
    t = table[:, None, :]
    coef = torch.round((blocks @ dct.T) / t) * t  # the lossy step: hard rounding, as a real encoder
    blocks = coef @ dct
    return blocks.reshape(b, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Baseline JPEG encode-decode with per-sample quality: 4:2:0, standard tables with libjpeg's quality
    scaling, orthonormal 8x8 DCT, hard rounding of the coefficients, nearest chroma upsampling.

    This mirrors BasicSR's ``DiffJPEG(differentiable=False)`` that Real-ESRGAN uses (2x2 average chroma
    subsampling, nearest upsampling, clamping to 0..255), with libjpeg's integer tables instead of BasicSR's
    unrounded ones. No entropy coding is needed (it is lossless). Not differentiable (data synthesis only).
    The input is clamped to ``[0, 1]`` first, as Real-ESRGAN does; any size works (replicate padding to a
    multiple of 16 at the bottom/right, cropped back, like an encoder's edge extension).

    Args:
        x: ``[B, 3, H, W]``.
        quality: ``[B]`` in ``[1, 100]`` (float; Real-ESRGAN draws continuous qualities).

    Returns:
        ``[B, 3, H, W]`` in ``[0, 1]``.
    """
    b, _, h, w = x.shape
    dtype = torch.float32
    x = torch.clamp(x.to(dtype), 0, 1) * 255.0
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    fwd = torch.tensor(_RGB_TO_YCC, dtype=dtype, device=x.device)
    ycc = torch.einsum("ij,bjhw->bihw", fwd, x)  # level shift: Y - 128, Cb/Cr already centred on 0
    y = ycc[:, :1] - 128.0
    c = F.avg_pool2d(ycc[:, 1:], 2)
    table_y, table_c = (
        t.to(device=x.device, dtype=dtype) for t in jpeg_tables(quality.reshape(-1).to(x.device))
    )
    if table_y.shape[0] == 1 and b > 1:
        table_y, table_c = table_y.expand(b, -1), table_c.expand(b, -1)
    dct = _dct_matrix(x.device, dtype)
    y = _block_codec(y, table_y, dct) + 128.0
    c = _block_codec(c, table_c, dct)
    c = c.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    inv = torch.tensor(_YCC_TO_RGB, dtype=dtype, device=x.device)
    rgb = torch.einsum("ij,bjhw->bihw", inv, torch.cat([y, c], dim=1))
    return (torch.clamp(rgb, 0, 255) / 255.0)[..., :h, :w]
