"""Blur kernels of Real-ESRGAN's degradation model, built with torch on CPU from an explicit generator.

Kernel shapes (BasicSR's definitions; ``x`` is the integer offset from the centre, ``Sigma`` the covariance
``R(theta) diag(sx^2, sy^2) R(theta)^T``, ``q = x^T Sigma^-1 x``):

- ``iso`` / ``aniso``: Gaussian ``exp(-q / 2)``;
- ``generalized_iso`` / ``generalized_aniso``: ``exp(-q^beta / 2)`` (beta < 1 heavy-tailed, > 1 flat top);
- ``plateau_iso`` / ``plateau_aniso``: ``1 / (1 + q^beta)``;
- ``sinc``: circular low-pass ``omega J1(omega r) / (2 pi r)`` (centre ``omega^2 / (4 pi)``), the ringing kernel.

Isotropic variants use ``sx`` only (``sy = sx``, ``theta = 0``). Every kernel is normalised to sum 1 in float64
and returned as float32 zero-padded to ``PAD_TO`` x ``PAD_TO`` (21), so kernels of different sizes batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PAD_TO = 21
"""Side of the zero-padded kernels stored in params (the largest kernel size)."""

KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
    "sinc",
    "pulse",
)
"""Names of the kernel families; params store the index (int64) for statistics. ``pulse`` = identity."""

KERNEL_SIZES: tuple[int, ...] = tuple(range(7, 22, 2))
"""Kernel sizes drawn by Real-ESRGAN: 7, 9, ..., 21."""


def _grid(kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer offsets ``(xx, yy)`` of a centred ``k x k`` grid, float64 (x along columns)."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel size must be a positive odd number, got {kernel_size}")
    ax = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """``q = x^T Sigma^-1 x`` on the grid, ``Sigma = R diag(sx^2, sy^2) R^T``. ``[k, k]`` float64."""
    xx, yy = _grid(kernel_size)
    c, s = math.cos(theta), math.sin(theta)
    # Rotate the offsets into the kernel's principal axes: q = u^2 / sx^2 + v^2 / sy^2.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum()


def gaussian_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> torch.Tensor:
    """Isotropic (``sigma_y=None``) or anisotropic Gaussian, ``[k, k]`` float64, sum 1."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(torch.exp(-0.5 * _quadratic_form(kernel_size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    kernel_size: int, sigma_x: float, beta: float, sigma_y: float | None = None, theta: float = 0.0
) -> torch.Tensor:
    """Generalised Gaussian ``exp(-q^beta / 2)``, ``[k, k]`` float64, sum 1."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(torch.exp(-0.5 * _quadratic_form(kernel_size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(
    kernel_size: int, sigma_x: float, beta: float, sigma_y: float | None = None, theta: float = 0.0
) -> torch.Tensor:
    """Plateau ``1 / (1 + q^beta)``, ``[k, k]`` float64, sum 1."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(1.0 / (1.0 + _quadratic_form(kernel_size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(kernel_size: int, omega: float) -> torch.Tensor:
    """Circular low-pass (2-D "sinc") with cut-off ``omega`` in radians (pi = Nyquist), ``[k, k]``, sum 1."""
    xx, yy = _grid(kernel_size)
    r = torch.sqrt(xx**2 + yy**2)
    # The r = 0 limit of omega J1(omega r) / (2 pi r) is omega^2 / (4 pi); avoid 0/0 at the centre.
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    kernel = omega * torch.special.bessel_j1(omega * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r == 0, torch.full_like(r, omega**2 / (4 * math.pi)), kernel)
    return _normalise(kernel)


def pulse_kernel(kernel_size: int = PAD_TO) -> torch.Tensor:
    """Identity kernel (1 at the centre), ``[k, k]`` float64."""
    kernel = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
    kernel[kernel_size // 2, kernel_size // 2] = 1.0
    return kernel


def pad_kernel(kernel: torch.Tensor, size: int = PAD_TO) -> torch.Tensor:
    """Zero-pad a centred odd ``[k, k]`` kernel to ``[size, size]``."""
    k = kernel.shape[-1]
    if k > size or (size - k) % 2:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}")
    p = (size - k) // 2
    return torch.nn.functional.pad(kernel, (p, p, p, p))


# ----------------------------------------------------------------------------------------------------------
# Random draws (CPU generator only)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _choice(generator: torch.Generator, n: int, probs: Sequence[float] | None = None) -> int:
    if probs is None:
        return int(torch.randint(0, n, (), generator=generator))
    p = torch.as_tensor([float(v) for v in probs], dtype=torch.float64)
    return int(torch.multinomial(p, 1, generator=generator))


def _random_beta(generator: torch.Generator, beta_range: Sequence[float]) -> float:
    """Real-ESRGAN's beta draw: half the time in ``[lo, 1)``, half in ``[1, hi)`` (so with ``lo = 1`` the
    plateau kernels get ``beta = 1`` half of the time)."""
    lo, hi = float(beta_range[0]), float(beta_range[1])
    if _uniform(generator, 0.0, 1.0) < 0.5:
        return _uniform(generator, lo, 1.0)
    return _uniform(generator, 1.0, hi)


def random_mixed_kernel(
    generator: torch.Generator,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    kernel_size: int,
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
    rotation_range: Sequence[float] = (-math.pi, math.pi),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Draw one kernel of a family chosen from ``kernel_list`` with ``kernel_prob`` (BasicSR's mixed kernels).

    Args:
        generator: CPU generator (the only source of randomness).
        kernel_list: family names from :data:`KERNEL_TYPES` (not ``sinc``/``pulse``).
        kernel_prob: probabilities of the families (normalised here).
        kernel_size: odd size.
        sigma_range: ``[min, max]`` of both ``sigma_x`` and ``sigma_y`` (pixels).
        betag_range, betap_range: shape ranges of the generalised-Gaussian and plateau families.
        rotation_range: ``[min, max]`` of the rotation angle of anisotropic kernels (radians).

    Returns:
        ``kernel [k, k]`` float64 summing to 1, and ``info`` with ``type`` (index into :data:`KERNEL_TYPES`),
        ``sigma_x``, ``sigma_y``, ``theta``, ``beta`` (1 for plain Gaussians).
    """
    if len(kernel_list) != len(kernel_prob):
        raise ValueError("kernel_list and kernel_prob must have the same length")
    name = kernel_list[_choice(generator, len(kernel_list), kernel_prob)]
    if name not in KERNEL_TYPES[:6]:
        raise ValueError(f"unknown kernel type {name!r}; expected one of {KERNEL_TYPES[:6]}")
    sigma_x = _uniform(generator, *sigma_range)
    if name.endswith("aniso"):
        sigma_y = _uniform(generator, *sigma_range)
        theta = _uniform(generator, *rotation_range)
    else:
        sigma_y, theta = sigma_x, 0.0
    beta = 1.0
    if name.startswith("generalized"):
        beta = _random_beta(generator, betag_range)
        kernel = generalized_gaussian_kernel(kernel_size, sigma_x, beta, sigma_y, theta)
    elif name.startswith("plateau"):
        beta = _random_beta(generator, betap_range)
        kernel = plateau_kernel(kernel_size, sigma_x, beta, sigma_y, theta)
    else:
        kernel = gaussian_kernel(kernel_size, sigma_x, sigma_y, theta)
    info = {
        "type": KERNEL_TYPES.index(name),
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "theta": theta,
        "beta": beta,
    }
    return kernel, info


def random_blur_kernel(
    generator: torch.Generator,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
    sinc_prob: float,
    kernel_sizes: Sequence[int] = KERNEL_SIZES,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stage's blur kernel as Real-ESRGAN's dataset draws it: a random odd size, then with probability
    ``sinc_prob`` a sinc kernel (cut-off in ``[pi/3, pi]``, ``[pi/5, pi]`` for sizes >= 13), else a mixed kernel.

    Returns:
        ``kernel [21, 21]`` float32 (zero-padded, sum 1) and ``info`` (``type``, ``size``, ``sigma_x``,
        ``sigma_y``, ``theta``, ``beta``, ``omega``; unused entries are 0).
    """
    size = int(kernel_sizes[_choice(generator, len(kernel_sizes))])
    info = {"size": size, "sigma_x": 0.0, "sigma_y": 0.0, "theta": 0.0, "beta": 0.0, "omega": 0.0}
    if _uniform(generator, 0.0, 1.0) < sinc_prob:
        omega = _uniform(generator, math.pi / 3 if size < 13 else math.pi / 5, math.pi)
        kernel = sinc_kernel(size, omega)
        info.update(type=KERNEL_TYPES.index("sinc"), omega=omega)
    else:
        kernel, mixed = random_mixed_kernel(
            generator, kernel_list, kernel_prob, size, sigma_range, betag_range, betap_range
        )
        info.update(mixed)
    return pad_kernel(kernel).to(torch.float32), info


def random_final_sinc(
    generator: torch.Generator, prob: float, kernel_sizes: Sequence[int] = KERNEL_SIZES
) -> tuple[torch.Tensor, dict[str, float]]:
    """The final-stage kernel: with probability ``prob`` a sinc of random size and cut-off in ``[pi/3, pi]``,
    else the identity pulse. Returns ``[21, 21]`` float32 and ``info`` (``type``, ``size``, ``omega``)."""
    if _uniform(generator, 0.0, 1.0) < prob:
        size = int(kernel_sizes[_choice(generator, len(kernel_sizes))])
        omega = _uniform(generator, math.pi / 3, math.pi)
        kernel = pad_kernel(sinc_kernel(size, omega))
        info = {"type": KERNEL_TYPES.index("sinc"), "size": size, "omega": omega}
    else:
        kernel = pulse_kernel()
        info = {"type": KERNEL_TYPES.index("pulse"), "size": 1, "omega": 0.0}
    return kernel.to(torch.float32), info
