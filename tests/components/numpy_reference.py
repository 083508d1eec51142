"""Independent float64 numpy references shared by the component tests (not collected: no test_ prefix).

Written differently from the torch code on purpose: explicit shifted sums over edge-padded arrays,
``np.percentile``, explicit half-pixel bilinear sampling, masks built by loops, ``np.fft``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_png(path: Path) -> np.ndarray:
    """RGB PNG -> float64 ``[3, H, W]`` in [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0


def to_torch(x: np.ndarray) -> torch.Tensor:
    """float64 numpy -> float32 torch."""
    return torch.from_numpy(np.ascontiguousarray(x)).float()


SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
SOBEL_Y = SOBEL_X.T.copy()
LAP = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
BOX = np.full((3, 3), 1.0 / 9.0)


def np_filt(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation of a 2-D array with edge (replicate) padding, as explicit shifted sums."""
    h, w = x.shape
    p = np.pad(x, 1, mode="edge")
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            out += k[dy, dx] * p[dy : dy + h, dx : dx + w]
    return out


def np_pnorm(x: np.ndarray, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    qlo, qhi = np.percentile(x, [lo * 100, hi * 100])  # linear interpolation = torch.quantile's
    return np.clip((x - qlo) / (qhi - qlo + 1e-6), 0, 1)


def np_detail(img: np.ndarray) -> np.ndarray:
    """img [3,H,W] or [1,H,W] -> [H,W]."""
    g = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2] if img.shape[0] == 3 else img[0]
    sob = np.sqrt(np_filt(g, SOBEL_X) ** 2 + np_filt(g, SOBEL_Y) ** 2)
    lap = np.abs(np_filt(g, LAP))
    var = np_filt((g - np_filt(g, BOX)) ** 2, BOX)
    return np_filt(np_pnorm((sob + lap + var) / 3.0), BOX)


def np_resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear (PyTorch align_corners=False, no antialias) of a 2-D array."""
    in_h, in_w = x.shape

    def coords(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = coords(out_h, in_h)
    x0, x1, lx = coords(out_w, in_w)
    top = x[y0][:, x0] * (1 - lx) + x[y0][:, x1] * lx
    bot = x[y1][:, x0] * (1 - lx) + x[y1][:, x1] * lx
    return top * (1 - ly)[:, None] + bot * ly[:, None]


def np_mask(h: int, w: int, rc: float, n: int, grid: str) -> np.ndarray:
    r = np.zeros((h, w // 2 + 1))
    for ky in range(h):
        for kx in range(w // 2 + 1):
            if grid == "official":
                yy, xx = ky / max(h - 1, 1), kx / max(w // 2, 1)
            else:  # signed frequencies in cycles/sample, Nyquist (0.5) -> 1
                fy = ky / h if ky <= (h - 1) // 2 else (ky - h) / h
                yy, xx = fy / 0.5, (kx / w) / 0.5
            r[ky, kx] = math.hypot(yy, xx)
    r = r / max(r.max(), 1.0) if grid == "official" else r / math.sqrt(2)
    return 1.0 / (1.0 + (r / rc) ** (2 * n))


def np_filter(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h, w = z.shape[-2:]
    return np.fft.irfft2(np.fft.rfft2(z, axes=(-2, -1)) * mask, s=(h, w), axes=(-2, -1))


def cosine(h: int, w: int, ky: int, kx: int) -> torch.Tensor:
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.cos(2 * math.pi * (ky * y / h + kx * x / w))
