"""Detail-Aware Weighting (DAW): per-pixel loss weights from image detail and current error.

Functional core (``detail_map``, ``error_map``, ``percentile_normalize``, ``daw_weights``, ...) plus a
thin parameter-free module, :class:`DetailAwareWeighting`, that owns the alpha schedule.

Formulas follow the official FiDeSR training code (``build_D``, ``build_E`` and the weighting block in
``train_fidesr.py``); see ``docs/components.md`` and ``../shared/DESIGN.md`` section 2. Everything here is
computed in float32 and without gradient: DAW only *weights* the losses, it is never differentiated.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GREY_WEIGHTS",
    "box3",
    "channel_mean_std",
    "conv3x3_replicate",
    "daw_weights",
    "detail_map",
    "detail_terms",
    "error_map",
    "percentile_normalize",
    "resize_weights",
    "soft_clip_normalize",
    "to_grey",
    "weighted_mean",
    "DetailAwareWeighting",
]

#: ITU-R BT.601 luma weights, as in the official code (applied to the image as given, no gamma).
GREY_WEIGHTS = (0.299, 0.587, 0.114)

# 3x3 kernels, applied as cross-correlation (F.conv2d semantics; Sobel/Laplacian magnitudes are sign-free
# anyway).
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


@lru_cache(maxsize=64)
def _fixed_kernels(name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The constant kernels, built once per device/dtype (avoids a host-to-device copy per call)."""
    if name == "detail":
        k = torch.tensor((_SOBEL_X, _SOBEL_Y, _LAPLACIAN))
    elif name == "box3":
        k = torch.full((1, 3, 3), 1.0 / 9.0)
    else:
        raise KeyError(name)
    return k.to(device=device, dtype=dtype)


def conv3x3_replicate(x: Tensor, kernels: Tensor) -> Tensor:
    """Depthwise 3x3 cross-correlation with replicate padding ("same" output size).

    Args:
        x: ``[B, C, H, W]`` any float dtype.
        kernels: ``[K, 3, 3]``; each of the ``K`` kernels is applied to every channel.

    Returns:
        ``[B, C*K, H, W]`` (channel ``c*K + k`` = kernel ``k`` on channel ``c``), dtype of ``x``.

    Plain ``F.pad(replicate) + F.conv2d``, exactly the official op (kornia's ``filter2d(...,
    border_type='replicate')`` gives bit-identical results; the tests use it as the reference).
    """
    c = x.shape[1]
    k = kernels.to(device=x.device, dtype=x.dtype)
    weight = k.unsqueeze(1).repeat(c, 1, 1, 1)  # [C*K, 1, 3, 3], groups=C
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=c)


def box3(x: Tensor) -> Tensor:
    """3x3 mean filter with replicate padding. ``x``: ``[B, C, H, W]`` -> same shape and dtype."""
    return conv3x3_replicate(x, _fixed_kernels("box3", x.device, x.dtype))


def to_grey(img: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of ``[B, 3, H, W]`` (or pass-through of ``[B, 1, H, W]``).

    Works in whatever range the image is given in (the training code passes GT in [-1, 1]).
    """
    if img.shape[1] == 3:
        r, g, b = GREY_WEIGHTS
        return r * img[:, 0:1] + g * img[:, 1:2] + b * img[:, 2:3]
    if img.shape[1] == 1:
        return img
    raise ValueError(f"expected an image with 1 or 3 channels, got shape {tuple(img.shape)}")


def detail_terms(grey: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three raw detail measures of a grey image (before averaging/normalisation).

    Args:
        grey: ``[B, 1, H, W]`` float32.

    Returns:
        ``(sobel, laplacian, variance)``, each ``[B, 1, H, W]`` >= 0:
        ``sqrt(gx^2 + gy^2)`` (no epsilon: DAW is never differentiated, so the sqrt kink at 0 is
        harmless), ``|lap * g|``, and local variance ``box3((g - box3(g))^2)``.
    """
    kernels = _fixed_kernels("detail", grey.device, grey.dtype)
    gx, gy, lap = conv3x3_replicate(grey, kernels).split(1, dim=1)
    sobel = torch.sqrt(gx**2 + gy**2)
    variance = box3((grey - box3(grey)) ** 2)
    return sobel, lap.abs(), variance


def percentile_normalize(x: Tensor, lo: float = 0.05, hi: float = 0.95, eps: float = 1e-6) -> Tensor:
    """Robust per-image min-max: ``clamp((x - q_lo) / (q_hi - q_lo + eps), 0, 1)``.

    Quantiles are taken per sample over *all* remaining elements (channels and pixels) with
    ``torch.quantile`` (linear interpolation), in float32.

    Args:
        x: ``[B, ...]`` any float dtype.

    Returns:
        Same shape and dtype as ``x``, values in ``[0, 1]``.
    """
    b = x.shape[0]
    xf = x.float()
    qs = torch.tensor([lo, hi], device=x.device, dtype=xf.dtype)
    q = torch.quantile(xf.reshape(b, -1), qs, dim=1)  # [2, B]
    view = (b,) + (1,) * (x.dim() - 1)
    q_lo, q_hi = q[0].view(view), q[1].view(view)
    return torch.clamp((xf - q_lo) / (q_hi - q_lo + eps), 0, 1).to(x.dtype)


@torch.no_grad()
def detail_map(img: Tensor) -> Tensor:
    """Detail map ``D`` in [0, 1]: where the image has edges and texture.

    ``D = box3(pnorm((sobel + |laplacian| + variance) / 3))`` on the grey image, all 3x3 filters with
    replicate padding, pnorm = :func:`percentile_normalize` (5-95 %).

    Args:
        img: ``[B, 3, H, W]`` (or ``[B, 1, H, W]`` grey), taken **as given**: training passes the GT in
            [-1, 1] (as the official code does); LFIM passes the LQ rescaled to [0, 1]. The range changes
            the mix of the three terms (variance scales quadratically), hence the two call sites differ.

    Returns:
        ``[B, 1, H, W]`` float32 in ``[0, 1]``.
    """
    grey = to_grey(img.float())
    sobel, lap, variance = detail_terms(grey)
    d = (sobel + lap + variance) / 3.0
    return box3(percentile_normalize(d))


def channel_mean_std(x: Tensor, w_mean: float = 0.8, w_std: float = 0.2) -> Tensor:
    """``w_mean * mean_c(x) + w_std * std_c(x)`` (unbiased std over channels).

    Used for the pixel error map (on ``|pred - gt|``) and LFIM's residual map (on ``|r'|``).
    ``x``: ``[B, C, H, W]`` with ``C >= 2`` -> ``[B, 1, H, W]``.
    """
    return w_mean * x.mean(dim=1, keepdim=True) + w_std * x.std(dim=1, keepdim=True)


def _perceptual_to_map(perceptual_map: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring an LPIPS output to ``[B, 1, H, W]``: spatial maps are resized bilinearly, per-image scalars
    (``[B]``, ``[B, 1]``, ``[B, 1, 1, 1]``) are broadcast, as in the official ``build_E``."""
    b = perceptual_map.shape[0]
    p = perceptual_map.float()
    if p.dim() != 4:
        p = p.reshape(b, 1, 1, 1)
    if p.shape[1] != 1:
        raise ValueError(f"perceptual_map must have one channel, got shape {tuple(perceptual_map.shape)}")
    if p.shape[-2:] == (1, 1):
        return p.expand(-1, -1, *size)
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return p


@torch.no_grad()
def error_map(pred: Tensor, target: Tensor, perceptual_map: Tensor | None, p: float = 0.5) -> Tensor:
    """Error map ``E`` in [0, 1]: where the current prediction is still wrong.

    ``E = pnorm((1 - p) * E_pix + p * E_perc)`` with ``E_pix = 0.8 mean_c|pred - gt| + 0.2 std_c|pred - gt|``
    and ``E_perc`` the spatial LPIPS map bilinearly resized to ``H x W``.

    ``p`` is the **perceptual** share, as in the official code (``daw_wperc``: 0 = pixel error only,
    1 = LPIPS only); the default 0.5 mixes them equally.

    Args:
        pred, target: ``[B, 3, H, W]`` in [-1, 1] (any range works; the map is normalised).
        perceptual_map: spatial LPIPS map ``[B, 1, h, w]`` (any ``h, w``), or a per-image LPIPS value
            (``[B]`` / ``[B, 1, 1, 1]``), or ``None`` which is allowed only with ``p == 0``.
        p: perceptual share in ``[0, 1]``.

    Returns:
        ``[B, 1, H, W]`` float32 in ``[0, 1]``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    e = channel_mean_std((pred.float() - target.float()).abs())
    if perceptual_map is None:
        if p != 0.0:
            raise ValueError("error_map needs a perceptual_map unless p == 0 (pixel error only)")
        e = (1.0 - p) * e
    else:
        e = (1.0 - p) * e + p * _perceptual_to_map(perceptual_map, tuple(target.shape[-2:]))
    return percentile_normalize(e)


def soft_clip_normalize(w: Tensor, wmax: float = 2.0) -> Tensor:
    """``scn(W) = wmax * tanh(Wb / wmax)``, ``Wb = box3(W) / (mean_hw(box3(W)) + 1e-6)``.

    The official code uses ``wmax_daw = 2`` which gives the paper's ``2 tanh(Wb / 2)``: a soft clip of
    the mean-normalised map to ``[0, wmax)``, linear (slope 1) near 0. ``w``: ``[B, 1, H, W]``.
    """
    wb = box3(w)
    wb = wb / (wb.mean(dim=(2, 3), keepdim=True) + 1e-6)
    return torch.tanh(wb / wmax) * wmax


@torch.no_grad()
def daw_weights(
    detail: Tensor,
    error: Tensor,
    alpha: float,
    wmax: float = 2.0,
    alpha_lf: float = 0.0,
    lf_smooth: int = 1,
) -> Tensor:
    """Per-pixel loss weights with mean 1 per image.

    ``w = 1 + alpha * scn(D * E) [+ alpha_lf * scn(clamp(1 - box3^lf_smooth(D), 0, 1) * E)]``,
    ``w_DAW = w / (mean_hw(w) + 1e-8)``. A term whose alpha is 0 is skipped (as in the official code).

    Args:
        detail: ``[B, 1, H, W]`` from :func:`detail_map`.
        error: ``[B, 1, H, W]`` from :func:`error_map`.

    Returns:
        ``[B, 1, H, W]`` float32, positive, mean 1 per image (to about 1e-7).
    """
    detail, error = detail.float(), error.float()
    w = torch.ones_like(error)
    if alpha > 0:
        w = w + alpha * soft_clip_normalize(detail * error, wmax)
    if alpha_lf > 0:
        d = detail
        for _ in range(lf_smooth):
            d = box3(d)
        w = w + alpha_lf * soft_clip_normalize((1.0 - d).clamp(0, 1) * error, wmax)
    return w / (w.mean(dim=(2, 3), keepdim=True) + 1e-8)


def resize_weights(w: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a weight map ``[B, 1, H, W]`` to ``size = (h, w)`` (bilinear, ``align_corners=False``).

    The single resize used by the MSE (identity), LPIPS (map size) and CSD (latent size) terms. No
    renormalisation: a downsized map keeps mean about (not exactly) 1, as in the official code.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(w.shape[-2:]) == size:
        return w
    return F.interpolate(w, size=size, mode="bilinear", align_corners=False)


def weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """``mean(resize(weights) * values)`` or ``mean(values)`` when ``weights`` is None.

    ``values``: ``[B, C, h, w]`` (e.g. squared error or an LPIPS map); ``weights``: ``[B, 1, H, W]``,
    broadcast over channels. A 1x1 ``values`` map (non-spatial LPIPS) is weighted by the per-image mean
    weight, as the official code does (bilinear resize to 1x1 would sample only the centre).
    """
    if weights is None:
        return values.mean()
    if values.shape[-2:] == (1, 1):
        return (weights.mean(dim=(2, 3), keepdim=True) * values).mean()
    return (resize_weights(weights, values.shape[-2:]) * values).mean()


class DetailAwareWeighting(nn.Module):
    """DAW with its schedule: weights are off for ``warmup_steps``, then alpha ramps linearly to its
    final value over ``ramp_steps``.

    Args:
        alpha: final strength of the detail x error term (paper/official: 0.6).
        wmax: soft-clip bound of :func:`soft_clip_normalize`; 2 reproduces ``2 tanh(Wb / 2)``.
        p: perceptual share of the error map (see :func:`error_map`).
        warmup_steps: optimizer steps with plain (unweighted) losses.
        ramp_steps: steps of the linear ramp of alpha (0 = jump to alpha).
        alpha_lf: final strength of the optional low-frequency term (official default 0 = off).
        lf_smooth: box3 passes applied to ``D`` before inverting it for the low-frequency term.

    The module has no parameters or buffers; it is an ``nn.Module`` only so that it composes with the
    training module and Hydra ``_target_`` configs.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        wmax: float = 2.0,
        p: float = 0.5,
        warmup_steps: int = 2000,
        ramp_steps: int = 1000,
        alpha_lf: float = 0.0,
        lf_smooth: int = 1,
    ) -> None:
        super().__init__()
        if alpha < 0 or alpha_lf < 0:
            raise ValueError(f"alpha and alpha_lf must be >= 0, got {alpha}, {alpha_lf}")
        if wmax <= 0:
            raise ValueError(f"wmax must be > 0, got {wmax}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if warmup_steps < 0 or ramp_steps < 0 or lf_smooth < 0:
            raise ValueError("warmup_steps, ramp_steps and lf_smooth must be >= 0")
        self.alpha = float(alpha)
        self.wmax = float(wmax)
        self.p = float(p)
        self.warmup_steps = int(warmup_steps)
        self.ramp_steps = int(ramp_steps)
        self.alpha_lf = float(alpha_lf)
        self.lf_smooth = int(lf_smooth)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, wmax={self.wmax}, p={self.p}, warmup_steps={self.warmup_steps}, "
            f"ramp_steps={self.ramp_steps}, alpha_lf={self.alpha_lf}, lf_smooth={self.lf_smooth}"
        )

    def ramp_at(self, step: int) -> float:
        """Schedule factor in [0, 1]: 0 before ``warmup_steps``, then linear over ``ramp_steps``."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(step - self.warmup_steps, self.ramp_steps) / self.ramp_steps

    def alpha_at(self, step: int) -> float:
        """Strength of the detail x error term at optimizer step ``step`` (0, ..., 0.3 at 2500, 0.6)."""
        return self.ramp_at(step) * self.alpha

    def alpha_lf_at(self, step: int) -> float:
        """Strength of the low-frequency term at ``step`` (same ramp)."""
        return self.ramp_at(step) * self.alpha_lf

    def is_active(self, step: int) -> bool:
        """Whether :meth:`weights` returns a map (otherwise plain losses apply)."""
        return self.alpha_at(step) > 0 or self.alpha_lf_at(step) > 0

    @torch.no_grad()
    def weights(self, detail: Tensor, error: Tensor, step: int) -> Tensor | None:
        """Weights ``[B, 1, H, W]`` (mean 1 per image) from precomputed maps, or None while off."""
        if not self.is_active(step):
            return None
        return daw_weights(
            detail, error, self.alpha_at(step), self.wmax, self.alpha_lf_at(step), self.lf_smooth
        )

    @torch.no_grad()
    def forward(
        self, pred: Tensor, target: Tensor, perceptual_map: Tensor | None, step: int
    ) -> Tensor | None:
        """Full DAW for one training step.

        Args:
            pred: generator output ``[B, 3, H, W]`` in [-1, 1] (detached here).
            target: GT ``[B, 3, H, W]`` in [-1, 1].
            perceptual_map: spatial LPIPS map ``[B, 1, h, w]`` of (pred, target), or None if ``p == 0``.
            step: optimizer step (0-based global step).

        Returns:
            ``[B, 1, H, W]`` weights with mean 1 per image, or None while DAW is off (nothing computed).
        """
        if not self.is_active(step):
            return None
        detail = detail_map(target)
        error = error_map(
            pred.detach(), target, None if perceptual_map is None else perceptual_map.detach(), self.p
        )
        return self.weights(detail, error, step)
