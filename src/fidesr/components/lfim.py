"""Latent Frequency Injection Module (LFIM): inference-time frequency edits of the SR latent.

Two gated edits of ``z = z_L - r'`` in the Fourier domain (official ``FiDeSR_eval.forward``):

* LF branch: adds back low frequencies of ``z`` where the LQ image is flat but the residual is large,
  ``z_l = z + lf_scale * pnorm((1 - M_sp) * rmap)^gamma * M_ch * LP(z)``.
* HF branch: injects the high frequencies that the model added on top of the LQ latent where the LQ has
  detail, ``z_f = z + hf_scale * M_sp^gamma * (1 - M_ch) * (HP(z) - HP(z_L))``.

Both active -> ``merge_ratio * z_l + (1 - merge_ratio) * z_f``. Filters are Butterworth masks on the
``rfft2`` half-spectrum, see :func:`butterworth_lowpass` for the "official" and "centered" grids.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fidesr.components.daw import channel_mean_std, detail_map, percentile_normalize
from fidesr.errors import ConfigValueError

__all__ = [
    "Grid",
    "LatentFrequencyInjection",
    "butterworth_lowpass",
    "channel_gate",
    "highpass",
    "latent_frequency_injection",
    "lowpass",
    "residual_map",
    "spatial_gate",
]

Grid = Literal["official", "centered"]
_GRIDS = ("official", "centered")
#: The released cut-offs (normalised radius): low-pass of the LF branch and the channel gate, high-pass of
#: the HF branch (also the band of the LRRB's HF error, fidesr.components.hf_error). The one place in code;
#: conf/lfim/on.yaml shows them for the command line.
LF_CUTOFF = 0.10
HF_CUTOFF = 0.32


def _radius(height: int, width: int, grid: str, device: torch.device | str | None) -> Tensor:
    """Normalised radial frequency ``[height, width // 2 + 1]`` float32 in [0, 1] on the rfft2 layout."""
    if grid == "official":
        # Official grid: row index k -> k / (H - 1) for k = 0..H-1 (so the negative vertical
        # frequencies in the upper half of the rows count as *high*), column k -> k / (W // 2), radius
        # divided by max(r.max(), 1) (= sqrt(2) whenever H, W > 1).
        f32 = torch.float32
        yy = torch.arange(height, device=device, dtype=f32).view(height, 1) / max(height - 1, 1)
        xx = torch.arange(width // 2 + 1, device=device, dtype=f32).view(1, -1) / max(width // 2, 1)
        r = torch.sqrt(yy * yy + xx * xx)
        return r / r.max().clamp(min=1.0)
    if grid == "centered":
        # Textbook radial grid on true signed frequencies: fftfreq / rfftfreq (cycles per sample, Nyquist
        # = 0.5) divided by 0.5 so that each axis runs over [-1, 1] with Nyquist = 1, and the radius
        # divided by sqrt(2) so that the (Nyquist, Nyquist) corner, the largest radius for even sizes,
        # is 1. mask(k) == mask(-k), and the cut-off means the same physical frequency for every size.
        fy = torch.fft.fftfreq(height, device=device, dtype=torch.float32).view(height, 1) / 0.5
        fx = torch.fft.rfftfreq(width, device=device, dtype=torch.float32).view(1, width // 2 + 1) / 0.5
        return torch.sqrt(fy * fy + fx * fx) / math.sqrt(2.0)
    raise ValueError(f"grid must be one of {_GRIDS}, got {grid!r}")


def butterworth_lowpass(
    height: int,
    width: int,
    cutoff: float,
    order: int = 2,
    grid: Grid = "official",
    device: torch.device | str | None = None,
) -> Tensor:
    """Butterworth low-pass mask ``1 / (1 + (r / cutoff)^(2 order))`` for ``rfft2`` spectra.

    Args:
        height, width: spatial size of the signal (``H, W``).
        cutoff: ``rc`` in normalised radius units (``r`` in [0, 1]); the mask is 0.5 at ``r == rc``.
        order: Butterworth order ``n``.
        grid: ``"official"`` reproduces the released model (not fftshift-aware: rows ``k > H/2``, i.e.
            negative vertical frequencies, are treated as high); ``"centered"`` is the radially symmetric
            filter on true signed frequencies (see ``_radius`` for the normalisation).

    Returns:
        ``[height, width // 2 + 1]`` float32 in ``(0, 1]``, 1 at DC. The high-pass is ``1 - mask``.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if order <= 0:
        raise ValueError(f"order must be > 0, got {order}")
    r = _radius(height, width, grid, device)
    return 1.0 / (1.0 + (r / cutoff).pow(2 * order))


def _apply_mask(z: Tensor, mask: Tensor) -> Tensor:
    h, w = z.shape[-2:]
    spec = torch.fft.rfft2(z.float(), dim=(-2, -1))
    return torch.fft.irfft2(spec * mask, s=(h, w), dim=(-2, -1)).to(z.dtype)


def lowpass(z: Tensor, cutoff: float, order: int = 2, grid: Grid = "official") -> Tensor:
    """Butterworth low-pass of ``z`` ``[..., H, W]`` over the last two dims (float32 FFT, returns z's dtype)."""
    h, w = z.shape[-2:]
    return _apply_mask(z, butterworth_lowpass(h, w, cutoff, order, grid, z.device))


def highpass(z: Tensor, cutoff: float, order: int = 2, grid: Grid = "official") -> Tensor:
    """Butterworth high-pass (mask ``1 - LP``) of ``z`` ``[..., H, W]``; returns z's dtype."""
    h, w = z.shape[-2:]
    return _apply_mask(z, 1.0 - butterworth_lowpass(h, w, cutoff, order, grid, z.device))


def channel_gate(
    z_lq: Tensor,
    cutoff: float = LF_CUTOFF,
    order: int = 2,
    tau: float = 0.8,
    sharpness: float = 10.0,
    grid: Grid = "official",
) -> Tensor:
    """``M_ch = sigmoid(sharpness * (ratio - tau))``, ``ratio_c = ||LP(z_L)_c||_2 / ||z_L,c||_2``.

    A channel whose energy is mostly low-frequency gets ``M_ch`` near 1 (LF branch), else near 0 (HF
    branch). Squared norms are clamped at 1e-12 before the sqrt; ratio clamped to [0, 1].

    ``z_lq``: ``[B, C, h, w]`` -> ``[B, C, 1, 1]`` in (0, 1), dtype of ``z_lq``.
    """
    x = z_lq.float()
    lp = lowpass(x, cutoff, order, grid)
    num = lp.pow(2).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12).sqrt()
    den = x.pow(2).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12).sqrt()
    ratio = (num / den).clamp(0, 1)
    return torch.sigmoid(float(sharpness) * (ratio - float(tau))).to(z_lq.dtype)


def spatial_gate(lq_image: Tensor, size: tuple[int, int]) -> Tensor:
    """``M_sp``: detail map of the LQ image rescaled to [0, 1], resized to the latent size.

    Args:
        lq_image: upsampled LQ ``[B, 3, H, W]`` in [-1, 1].
        size: latent ``(h, w)``.

    Returns:
        ``[B, 1, h, w]`` float32 in [0, 1] (bilinear, ``align_corners=False``, then clamped).
    """
    d = detail_map(lq_image.float() * 0.5 + 0.5)
    d = F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False)
    return d.clamp(0, 1)


def residual_map(residual: Tensor) -> Tensor:
    """``rmap = pnorm(0.8 mean_c|r'| + 0.2 std_c|r'|)``: where the model changed the LQ latent most.

    ``residual``: ``[B, C, h, w]`` -> ``[B, 1, h, w]`` float32 in [0, 1].
    """
    return percentile_normalize(channel_mean_std(residual.float().abs()))


def _check_scale(name: str, value: float) -> float:
    """A strength as a float: finite and >= 0 (NaN would fail ``> 0`` and switch the branch off silently,
    Inf would make the latent non-finite)."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigValueError(
            f"{name} must be a finite number >= 0 (0 switches the branch off), got {value}"
        )
    return value


@torch.no_grad()
def latent_frequency_injection(
    z: Tensor,
    z_lq: Tensor,
    residual: Tensor,
    lq_image: Tensor,
    lf_scale: float = 0.2,
    hf_scale: float = 0.2,
    lf_cutoff: float = LF_CUTOFF,
    hf_cutoff: float = HF_CUTOFF,
    lf_order: int = 2,
    hf_order: int = 2,
    tau: float = 0.8,
    sharpness: float = 10.0,
    lf_gamma: float = 1.2,
    hf_gamma: float = 1.2,
    merge_ratio: float = 0.5,
    grid: Grid = "official",
) -> Tensor:
    """LFIM on one (stitched) latent; see the module docstring for the formulas.

    Args:
        z: SR latent ``z_L - r'`` ``[B, C, h, w]``.
        z_lq: LQ latent ``z_L`` ``[B, C, h, w]``.
        residual: refined residual ``r'`` (after the LRRB) ``[B, C, h, w]``.
        lq_image: upsampled LQ image ``[B, 3, H, W]`` in [-1, 1] (typically ``H = 8h``).
        lf_scale, hf_scale: branch strengths, >= 0; 0 switches a branch off.
        lf_cutoff: LP cut-off of the LF branch, also used by the channel gate in both branches.
        hf_cutoff: HP cut-off of the HF branch.
        lf_order, hf_order: Butterworth orders (``lf_order`` also for the channel gate).
        tau, sharpness: channel-gate threshold and steepness.
        lf_gamma, hf_gamma: exponents of the spatial masks (> 1 concentrates them).
        merge_ratio: weight of the LF result when both branches are on (clamped to [0, 1]).
        grid: Butterworth grid, ``"official"`` or ``"centered"``.

    Returns:
        ``[B, C, h, w]``; ``z`` itself (same object) when both strengths are 0. Computed in float32
        (the gates are float32), returned in ``z``'s dtype.
    """
    lf_scale = _check_scale("lf_scale", lf_scale)
    hf_scale = _check_scale("hf_scale", hf_scale)
    lf_on, hf_on = lf_scale > 0, hf_scale > 0
    if not (lf_on or hf_on):
        return z
    zf32 = z.float()
    m_sp = spatial_gate(lq_image, tuple(z.shape[-2:]))
    m_ch = channel_gate(z_lq, lf_cutoff, lf_order, tau, sharpness, grid).float()
    z_l = z_f = zf32
    if lf_on:
        delta_lp = lowpass(zf32, lf_cutoff, lf_order, grid)
        m_sp_lf = percentile_normalize((1.0 - m_sp) * residual_map(residual))
        if lf_gamma != 1.0:
            m_sp_lf = m_sp_lf.pow(lf_gamma)
        z_l = zf32 + lf_scale * (m_sp_lf * m_ch) * delta_lp
    if hf_on:
        delta_hp = highpass(zf32, hf_cutoff, hf_order, grid) - highpass(
            z_lq.float(), hf_cutoff, hf_order, grid
        )
        m_sp_hf = m_sp.pow(hf_gamma) if hf_gamma != 1.0 else m_sp
        z_f = zf32 + hf_scale * (m_sp_hf * (1.0 - m_ch)) * delta_hp
    if lf_on and hf_on:
        ratio = min(max(float(merge_ratio), 0.0), 1.0)
        out = ratio * z_l + (1.0 - ratio) * z_f
    else:
        out = z_l if lf_on else z_f
    return out.to(z.dtype)


class LatentFrequencyInjection(nn.Module):
    """Thin parameter-free module around :func:`latent_frequency_injection` holding its settings.

    Defaults are the released inference settings (``scripts/test/test_fidesr.sh`` + ``test_fidesr.py``):
    strengths 0.2 / 0.2, cut-offs 0.10 (LF, channel gate) / 0.32 (HF), order 2, tau 0.8, sharpness 10,
    gammas 1.2, merge 0.5, official grid.
    """

    def __init__(
        self,
        lf_scale: float = 0.2,
        hf_scale: float = 0.2,
        lf_cutoff: float = LF_CUTOFF,
        hf_cutoff: float = HF_CUTOFF,
        lf_order: int = 2,
        hf_order: int = 2,
        tau: float = 0.8,
        sharpness: float = 10.0,
        lf_gamma: float = 1.2,
        hf_gamma: float = 1.2,
        merge_ratio: float = 0.5,
        grid: Grid = "official",
    ) -> None:
        super().__init__()
        if grid not in _GRIDS:
            raise ValueError(f"grid must be one of {_GRIDS}, got {grid!r}")
        self.lf_scale = _check_scale("lf_scale", lf_scale)
        self.hf_scale = _check_scale("hf_scale", hf_scale)
        self.lf_cutoff = float(lf_cutoff)
        self.hf_cutoff = float(hf_cutoff)
        self.lf_order = lf_order
        self.hf_order = hf_order
        self.tau = float(tau)
        self.sharpness = float(sharpness)
        self.lf_gamma = float(lf_gamma)
        self.hf_gamma = float(hf_gamma)
        self.merge_ratio = float(merge_ratio)
        self.grid: Grid = grid

    def extra_repr(self) -> str:
        return (
            f"lf_scale={self.lf_scale}, hf_scale={self.hf_scale}, lf_cutoff={self.lf_cutoff}, "
            f"hf_cutoff={self.hf_cutoff}, tau={self.tau}, sharpness={self.sharpness}, grid={self.grid!r}"
        )

    def forward(
        self,
        z: Tensor,
        z_lq: Tensor,
        residual: Tensor,
        lq_image: Tensor,
        lf_scale: float | None = None,
        hf_scale: float | None = None,
    ) -> Tensor:
        """Apply LFIM. ``lf_scale`` / ``hf_scale`` override the module's strengths for this call
        (None = use the module's). Shapes as in :func:`latent_frequency_injection`."""
        return latent_frequency_injection(
            z,
            z_lq,
            residual,
            lq_image,
            lf_scale=self.lf_scale if lf_scale is None else lf_scale,
            hf_scale=self.hf_scale if hf_scale is None else hf_scale,
            lf_cutoff=self.lf_cutoff,
            hf_cutoff=self.hf_cutoff,
            lf_order=self.lf_order,
            hf_order=self.hf_order,
            tau=self.tau,
            sharpness=self.sharpness,
            lf_gamma=self.lf_gamma,
            hf_gamma=self.hf_gamma,
            merge_ratio=self.merge_ratio,
            grid=self.grid,
        )
