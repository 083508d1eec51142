"""Tiled evaluation with Gaussian blending: the one implementation behind latent (UNet) and VAE tiling.

A function that maps a spatial tensor to a spatial tensor (the one-step UNet + LRRB on latents, the VAE
encoder on pixels, the VAE decoder on latents) is applied to overlapping tiles; every output tile is
weighted by a separable Gaussian window and the weighted sum is divided by the sum of the weights, as in
OSEDiff / PiSA-SR (``sigma^2 = 0.01 * tile^2``, i.e. ``sigma = tile / 10``). The window is tiny at a tile's
border (``exp(-12.5) ~ 4e-6`` at the edge), so the border pixels of a tile, where convolutions see their
zero padding, hardly count wherever another tile covers them, and the hand-over from one tile to the next
is a smooth logistic ramp instead of a step.

Sizes are expressed on a *grid* (for fidesr always the latent grid): the input is ``in_factor`` times the
grid and the output ``out_factor`` times it (encoder: 8 -> 1, decoder: 1 -> 8, UNet: 1 -> 1), so tile
offsets stay aligned to the VAE factor on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["gaussian_window", "seam_score", "tile_starts", "tiled_apply", "tile_borders"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, size)``: evenly spread, first at 0, last flush with the end.

    Args:
        size: length of the axis (grid units).
        tile: tile length; a tile never exceeds ``size`` (one tile when ``size <= tile``).
        overlap: minimum overlap between neighbours, ``0 <= overlap < tile``.

    Returns:
        Sorted offsets; neighbours overlap by at least ``overlap`` (even spreading can only add to it).
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def gaussian_window(height: int, width: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Separable Gaussian ``exp(-d^2 / (2 * 0.01 * L^2))`` around the tile centre, per axis of length L.

    Returns ``[1, 1, height, width]``, 1 near the centre, ~4e-6 at the edges (OSEDiff / PiSA-SR weights
    without their constant normalisation, which cancels in the blend).
    """

    def axis(n: int) -> Tensor:
        x = torch.arange(n, device=device, dtype=torch.float64)
        return torch.exp(-((x - (n - 1) / 2) ** 2) / (2 * 0.01 * n * n))

    return (axis(height)[:, None] * axis(width)[None, :]).to(dtype).view(1, 1, height, width)


def _tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, th, tw) of every tile on an ``h x w`` grid, row-major."""
    th, tw = min(tile, h), min(tile, w)
    return [(y, x, th, tw) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def tiled_apply(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    *,
    in_factor: int = 1,
    out_factor: int = 1,
    tiles_per_call: int = 1,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Apply ``fn`` tile by tile and blend the outputs with Gaussian windows.

    Args:
        fn: ``[N*B, C, t*in_factor, t*in_factor] -> [N*B, C', t*out_factor, t*out_factor]`` (N tiles of a
            batch of B, concatenated tile-major along dim 0; every tile has the same size, so several
            tiles can go through one call). Must be translation-equivariant in the sense of a convolution.
        x: ``[B, C, h*in_factor, w*in_factor]``, spatial size a multiple of ``in_factor``.
        tile, overlap: tile size and minimum overlap in grid units (see :func:`tile_starts`).
        in_factor, out_factor: input and output pixels per grid unit.
        tiles_per_call: how many tiles go through ``fn`` at once (speed vs peak memory).
        out_dtype: dtype of the result (default: ``fn``'s output dtype). Accumulation is float32.

    Returns:
        ``[B, C', h*out_factor, w*out_factor]`` on ``x``'s device. With one tile covering everything this
        is ``fn(x)`` up to float32 rounding of ``w * y / w``.
    """
    if x.shape[-2] % in_factor or x.shape[-1] % in_factor:
        raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of in_factor={in_factor}")
    b = x.shape[0]
    h, w = x.shape[-2] // in_factor, x.shape[-1] // in_factor
    tiles = _tiles(h, w, tile, overlap)
    th, tw = tiles[0][2], tiles[0][3]
    window = gaussian_window(th * out_factor, tw * out_factor, device=x.device)
    acc: Tensor | None = None
    weight = torch.zeros(1, 1, h * out_factor, w * out_factor, device=x.device, dtype=torch.float32)
    for group in _chunks(tiles, max(1, tiles_per_call)):
        crops = [
            x[..., y * in_factor : (y + th) * in_factor, x0 * in_factor : (x0 + tw) * in_factor]
            for y, x0, _, _ in group
        ]
        out = fn(torch.cat(crops, dim=0) if len(crops) > 1 else crops[0])
        if acc is None:
            out_dtype = out_dtype or out.dtype
            acc = torch.zeros(
                b, out.shape[1], h * out_factor, w * out_factor, device=x.device, dtype=torch.float32
            )
        for i, (y, x0, _, _) in enumerate(group):
            ys = slice(y * out_factor, (y + th) * out_factor)
            xs = slice(x0 * out_factor, (x0 + tw) * out_factor)
            acc[..., ys, xs] += out[i * b : (i + 1) * b].float() * window
            weight[..., ys, xs] += window
        del out
    if acc is None:
        raise ValueError(f"tiled_apply: no tiles for an input of shape {tuple(x.shape)}")
    return acc.div_(weight).to(out_dtype)


def tile_borders(size: int, tile: int, overlap: int, factor: int = 1) -> list[int]:
    """Pixel positions (times ``factor``) where a tile starts or ends inside ``(0, size*factor)``: where a
    badly blended tiling shows its seams. Used by :func:`seam_score` and the tests."""
    edges = set()
    for s in tile_starts(size, tile, overlap):
        for e in (s, s + min(tile, size)):
            if 0 < e < size:
                edges.add(e * factor)
    return sorted(edges)


def seam_score(img: Tensor, rows: list[int], cols: list[int]) -> float:
    """How much stronger the image changes across tile borders than elsewhere.

    ``mean |I[:, c] - I[:, c-1]|`` over the border columns ``cols`` (and likewise rows) divided by the same
    mean over all columns / rows. About 1 for a seamless result; a visible seam (a step of a few grey
    levels along a whole border) pushes it well above 1. ``img``: ``[B, C, H, W]``.
    """
    img = img.float()
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # [W-1]: between c-1 and c
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(dim=(0, 1, 3))  # [H-1]
    num, den = [], []
    if cols:
        num.append(dx[[c - 1 for c in cols]].mean())
        den.append(dx.mean())
    if rows:
        num.append(dy[[r - 1 for r in rows]].mean())
        den.append(dy.mean())
    if not num:
        return 1.0
    return float(torch.stack(num).mean() / torch.stack(den).mean().clamp_min(1e-12))
