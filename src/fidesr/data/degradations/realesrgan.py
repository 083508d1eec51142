"""Real-ESRGAN's second-order degradation (x4) with per-sample parameters, applied batched on the device.

Stages (Wang et al. 2021, ``realesrgan_model.feed_data``; ``->`` = then):

1. blur (kernel1) -> random resize (up/down/keep, area/bilinear/bicubic) -> Gaussian or Poisson noise
   (colour or grey) -> clamp -> JPEG;
2. blur with probability ``second_blur_prob`` (kernel2) -> random resize to ``GT / scale * s2`` -> noise;
3. final, in one of two random orders: [resize to ``GT / scale`` -> sinc] -> JPEG, or JPEG -> [resize -> sinc];
   then clamp and round to 8-bit levels; optionally resize back to the GT size.

Differences from the reference, all deliberate: every random choice is per sample (Real-ESRGAN draws the resize
scale/mode, the noise family and the final order once per batch, because its batch must keep one shape); the
random draws happen on CPU in :meth:`RealESRGANDegradation.sample` and the noise realisations come from a
per-sample seed, so a sample's LQ does not depend on its batch-mates; the optional resize back happens after
the 8-bit rounding (the LQ is the image a file would hold; OSEDiff rounds after resizing back).

Batching: the first blur (at GT size, the most expensive op) and the final sinc + JPEG (at LQ size) run on the
whole batch. Between the first random resize and the final resize each sample has its own size, so those ops
run per sample (the alternative, padding to the largest size in the batch, costs more than it saves).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from . import kernels as K
from . import ops
from .base import as_range, batch_size, draw_seed, lq_size, uniform

_DEFAULT_KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_DEFAULT_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


def _probs(value: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in value)
    if len(vals) != n or min(vals) < 0 or sum(vals) <= 0:
        raise ValueError(f"{name} must be {n} non-negative probabilities, got {list(value)}")
    return vals


def _prob(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class RealESRGANDegradation:
    """Second-order Real-ESRGAN degradation; arguments mirror the Real-ESRGAN/OSEDiff config keys.

    Defaults are Real-ESRGAN's ``train_realesrnet_x4plus`` settings (= the OSEDiff preset).

    Args:
        scale: overall downscale factor (the LQ is ``GT / scale``).
        resize_back: resize the LQ back to the GT size (what one-step diffusion SR models train on).
        resize_back_mode: ``"bicubic"`` (as inference upsamples the LQ) or ``"random"`` (area/bilinear/bicubic
            per sample, as OSEDiff's training data).
        kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range: first-stage blur kernel.
        kernel_list2, kernel_prob2, sinc_prob2, blur_sigma2, betag_range2, betap_range2: second-stage kernel.
        final_sinc_prob: probability of the final sinc filter (else identity).
        resize_prob: probabilities of ``[up, down, keep]``; resize_range: ``[min, max]`` scale (down draws in
            ``[min, 1)``, up in ``[1, max)``).
        gaussian_noise_prob: Gaussian (else Poisson) noise; noise_range: sigma in 0..255 units;
            poisson_scale_range: Poisson noise scale; gray_noise_prob: grey (luma-only) noise.
        jpeg_range: JPEG quality of the first stage.
        second_blur_prob, resize_prob2, resize_range2, gaussian_noise_prob2, noise_range2, poisson_scale_range2,
            gray_noise_prob2: the second stage (its resize is relative to ``GT / scale``).
        jpeg_range2: JPEG quality of the final stage.
        final_resize_first_prob: probability of the order [resize + sinc] -> JPEG (else JPEG -> [resize + sinc]).
    """

    def __init__(
        self,
        scale: int = 4,
        resize_back: bool = True,
        resize_back_mode: str = "bicubic",
        # first-stage kernel
        kernel_list: Sequence[str] = _DEFAULT_KERNELS,
        kernel_prob: Sequence[float] = _DEFAULT_KERNEL_PROB,
        sinc_prob: float = 0.1,
        blur_sigma: Sequence[float] = (0.2, 3.0),
        betag_range: Sequence[float] = (0.5, 4.0),
        betap_range: Sequence[float] = (1.0, 2.0),
        # second-stage kernel
        kernel_list2: Sequence[str] = _DEFAULT_KERNELS,
        kernel_prob2: Sequence[float] = _DEFAULT_KERNEL_PROB,
        sinc_prob2: float = 0.1,
        blur_sigma2: Sequence[float] = (0.2, 1.5),
        betag_range2: Sequence[float] = (0.5, 4.0),
        betap_range2: Sequence[float] = (1.0, 2.0),
        final_sinc_prob: float = 0.8,
        # first stage
        resize_prob: Sequence[float] = (0.2, 0.7, 0.1),
        resize_range: Sequence[float] = (0.15, 1.5),
        gaussian_noise_prob: float = 0.5,
        noise_range: Sequence[float] = (1.0, 30.0),
        poisson_scale_range: Sequence[float] = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_range: Sequence[float] = (30.0, 95.0),
        # second stage
        second_blur_prob: float = 0.8,
        resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
        resize_range2: Sequence[float] = (0.3, 1.2),
        gaussian_noise_prob2: float = 0.5,
        noise_range2: Sequence[float] = (1.0, 25.0),
        poisson_scale_range2: Sequence[float] = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_range2: Sequence[float] = (30.0, 95.0),
        final_resize_first_prob: float = 0.5,
    ) -> None:
        if int(scale) < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if resize_back_mode not in ("bicubic", "random"):
            raise ValueError(f"resize_back_mode must be 'bicubic' or 'random', got {resize_back_mode!r}")
        self.scale = int(scale)
        self.resize_back = bool(resize_back)
        self.resize_back_mode = resize_back_mode
        self.stages = []
        for kl, kp, sp, bs, bg, bp in (
            (kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range),
            (kernel_list2, kernel_prob2, sinc_prob2, blur_sigma2, betag_range2, betap_range2),
        ):
            kl = tuple(str(k) for k in kl)
            unknown = set(kl) - set(K.KERNEL_TYPES[:6])
            if unknown:
                raise ValueError(f"unknown kernel types {sorted(unknown)}; expected {K.KERNEL_TYPES[:6]}")
            self.stages.append(
                {
                    "kernel_list": kl,
                    "kernel_prob": _probs(kp, len(kl), "kernel_prob"),
                    "sinc_prob": _prob(sp, "sinc_prob"),
                    "blur_sigma": as_range(bs, "blur_sigma", low=1e-3),
                    "betag_range": as_range(bg, "betag_range", low=1e-3),
                    "betap_range": as_range(bp, "betap_range", low=1e-3),
                }
            )
        self.stages[0].update(
            resize_prob=_probs(resize_prob, 3, "resize_prob"),
            resize_range=as_range(resize_range, "resize_range", low=1e-3),
            gaussian_noise_prob=_prob(gaussian_noise_prob, "gaussian_noise_prob"),
            noise_range=as_range(noise_range, "noise_range", low=0.0),
            poisson_scale_range=as_range(poisson_scale_range, "poisson_scale_range", low=0.0),
            gray_noise_prob=_prob(gray_noise_prob, "gray_noise_prob"),
            jpeg_range=as_range(jpeg_range, "jpeg_range", low=0.0, high=100.0),
            blur_prob=1.0,
        )
        self.stages[1].update(
            resize_prob=_probs(resize_prob2, 3, "resize_prob2"),
            resize_range=as_range(resize_range2, "resize_range2", low=1e-3),
            gaussian_noise_prob=_prob(gaussian_noise_prob2, "gaussian_noise_prob2"),
            noise_range=as_range(noise_range2, "noise_range2", low=0.0),
            poisson_scale_range=as_range(poisson_scale_range2, "poisson_scale_range2", low=0.0),
            gray_noise_prob=_prob(gray_noise_prob2, "gray_noise_prob2"),
            jpeg_range=as_range(jpeg_range2, "jpeg_range2", low=0.0, high=100.0),
            blur_prob=_prob(second_blur_prob, "second_blur_prob"),
        )
        for stage in self.stages:
            lo, hi = stage["resize_range"]
            if not lo <= 1.0 <= hi:
                raise ValueError(
                    f"resize ranges must contain 1 (down in [min, 1), up in [1, max)), got {[lo, hi]}"
                )
        self.final_sinc_prob = _prob(final_sinc_prob, "final_sinc_prob")
        self.final_resize_first_prob = _prob(final_resize_first_prob, "final_resize_first_prob")

    def __repr__(self) -> str:
        s1, s2 = self.stages
        return (
            f"RealESRGANDegradation(scale={self.scale}, resize_back={self.resize_back}, "
            f"noise_range={list(s1['noise_range'])}, jpeg_range={list(s1['jpeg_range'])}, "
            f"resize_range={list(s1['resize_range'])}, noise_range2={list(s2['noise_range'])}, "
            f"jpeg_range2={list(s2['jpeg_range'])}, resize_range2={list(s2['resize_range'])}, "
            f"second_blur_prob={s2['blur_prob']})"
        )

    # ------------------------------------------------------------------------------------------------------
    # sampling (CPU, one sample)

    @staticmethod
    def _draw_resize(gen: torch.Generator, probs: tuple[float, ...], rng: tuple[float, float]) -> float:
        updown = K._choice(gen, 3, probs)  # 0 up, 1 down, 2 keep
        if updown == 0:
            return float(uniform(gen, 1.0, rng[1]))
        if updown == 1:
            return float(uniform(gen, rng[0], 1.0))
        return 1.0

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw one sample's params on CPU.

        Returns 0-d tensors (float32 unless noted) and two ``[21, 21]`` float32 kernels plus the final sinc:
        ``kernel{1,2}`` (and ``kernel{1,2}_type`` int64 index into :data:`kernels.KERNEL_TYPES`, ``_size``
        int64, ``_sigma_x``, ``_sigma_y``, ``_theta``, ``_beta``, ``_omega`` for statistics), ``sinc_kernel``
        (``sinc_omega``, 0 = identity), per stage ``i`` in 1, 2: ``resize{i}_scale``, ``resize{i}_mode`` (int64
        index into :data:`ops.RESIZE_MODES`), ``noise{i}_gaussian`` (bool; else Poisson), ``noise{i}_sigma``
        (0..255), ``noise{i}_poisson``, ``noise{i}_gray`` (bool); ``blur2`` (bool), ``jpeg1_quality``,
        ``jpeg2_quality`` (final stage), ``final_resize_first`` (bool), ``final_mode`` and ``resize_back_mode``
        (int64), and ``seed`` (int64) for the noise realisations.
        """
        g = generator
        out: dict[str, torch.Tensor] = {}
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
        for i, st in enumerate(self.stages, start=1):
            kernel, info = K.random_blur_kernel(
                g,
                st["kernel_list"],
                st["kernel_prob"],
                st["blur_sigma"],
                st["betag_range"],
                st["betap_range"],
                st["sinc_prob"],
            )
            out[f"kernel{i}"] = kernel
            out[f"kernel{i}_type"] = i64(info["type"])
            out[f"kernel{i}_size"] = i64(info["size"])
            for key in ("sigma_x", "sigma_y", "theta", "beta", "omega"):
                out[f"kernel{i}_{key}"] = f32(info[key])
        sinc, info = K.random_final_sinc(g, self.final_sinc_prob)
        out["sinc_kernel"] = sinc
        out["sinc_size"] = i64(info["size"])
        out["sinc_omega"] = f32(info["omega"])
        for i, st in enumerate(self.stages, start=1):
            if i == 2:
                out["blur2"] = torch.tensor(float(uniform(g, 0.0, 1.0)) < st["blur_prob"])
            out[f"resize{i}_scale"] = f32(self._draw_resize(g, st["resize_prob"], st["resize_range"]))
            out[f"resize{i}_mode"] = i64(K._choice(g, len(ops.RESIZE_MODES)))
            out[f"noise{i}_gaussian"] = torch.tensor(float(uniform(g, 0.0, 1.0)) < st["gaussian_noise_prob"])
            out[f"noise{i}_sigma"] = uniform(g, *st["noise_range"])
            out[f"noise{i}_poisson"] = uniform(g, *st["poisson_scale_range"])
            out[f"noise{i}_gray"] = torch.tensor(float(uniform(g, 0.0, 1.0)) < st["gray_noise_prob"])
            out[f"jpeg{i}_quality"] = uniform(g, *st["jpeg_range"])
        out["final_resize_first"] = torch.tensor(float(uniform(g, 0.0, 1.0)) < self.final_resize_first_prob)
        out["final_mode"] = i64(K._choice(g, len(ops.RESIZE_MODES)))
        out["resize_back_mode"] = i64(K._choice(g, len(ops.RESIZE_MODES)))
        out["seed"] = draw_seed(g)
        return out

    # ------------------------------------------------------------------------------------------------------
    # application (device, batched)

    @staticmethod
    def _noise(
        x: torch.Tensor,
        p: Mapping[str, torch.Tensor],
        host: Mapping[str, torch.Tensor],
        i: int,
        stage: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """Stage ``stage``'s noise on sample ``i`` (``x`` is ``[1, 3, h, w]``), then clamp to ``[0, 1]``.
        ``p``: params on the device (values); ``host``: their CPU copies (the branch choices)."""
        gray = p[f"noise{stage}_gray"][i : i + 1]
        if bool(host[f"noise{stage}_gaussian"][i]):
            x = ops.add_gaussian_noise(x, p[f"noise{stage}_sigma"][i : i + 1], gray, [gen])
        else:
            x = ops.add_poisson_noise(x, p[f"noise{stage}_poisson"][i : i + 1], gray, [gen])
        return torch.clamp(x, 0, 1)

    @torch.no_grad()  # data synthesis: JPEG's hard rounding has no useful gradient anyway
    def apply(self, gt: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``gt [B, 3, H, W]`` in ``[0, 1]`` (H, W multiples of ``scale``) -> LQ float32 in ``[0, 1]``,
        ``[B, 3, H/scale, W/scale]`` quantised to 8-bit levels, or ``[B, 3, H, W]`` when ``resize_back``."""
        b = batch_size(gt, params)
        out_h, out_w = lq_size(gt, self.scale)
        h, w = gt.shape[-2:]
        p = params
        # Host copies of the small per-sample choices: one transfer instead of a sync per read on GPU.
        host = {k: v.detach().cpu() for k, v in p.items() if v.ndim == 1}
        modes = lambda key, i: ops.RESIZE_MODES[int(host[key][i])]  # noqa: E731
        gens = ops.generators_from_seeds(host["seed"], gt.device)

        # Stage 1 blur: same size for all samples -> one batched call with per-sample kernels.
        x = ops.filter2d(gt.float(), p["kernel1"])

        # Ragged section: every sample has its own size from the first resize to the final resize.
        pieces = []
        for i in range(b):
            xi = x[i : i + 1]
            s1 = float(host["resize1_scale"][i])
            if s1 != 1.0:
                if math.floor(h * s1) >= 1 and math.floor(w * s1) >= 1:
                    xi = ops.resize(xi, scale_factor=s1, mode=modes("resize1_mode", i))
                else:  # degenerate tiny inputs only
                    xi = ops.resize(xi, size=(1, 1), mode=modes("resize1_mode", i))
            xi = self._noise(xi, p, host, i, 1, gens[i])
            xi = ops.jpeg(xi, p["jpeg1_quality"][i : i + 1])
            if bool(host["blur2"][i]):
                xi = ops.filter2d(xi, p["kernel2"][i : i + 1])
            s2 = float(host["resize2_scale"][i])
            size2 = (max(1, int(h / self.scale * s2)), max(1, int(w / self.scale * s2)))
            if size2 != tuple(xi.shape[-2:]):
                xi = ops.resize(xi, size=size2, mode=modes("resize2_mode", i))
            xi = self._noise(xi, p, host, i, 2, gens[i])
            if not bool(host["final_resize_first"][i]):
                xi = ops.jpeg(xi, p["jpeg2_quality"][i : i + 1])
            if tuple(xi.shape[-2:]) != (out_h, out_w):
                xi = ops.resize(xi, size=(out_h, out_w), mode=modes("final_mode", i))
            pieces.append(xi)
        x = torch.cat(pieces)

        # Final stage at the LQ size: the sinc for everybody, then JPEG for the [resize + sinc] -> JPEG order.
        x = ops.filter2d(x, p["sinc_kernel"])
        first = host["final_resize_first"].nonzero().flatten().tolist()
        if first:
            idx = torch.tensor(first, device=x.device)
            x = x.index_copy(0, idx, ops.jpeg(x[idx], p["jpeg2_quality"][idx]))
        x = ops.quantize_8bit(x)

        if self.resize_back:
            x = self._resize_back(x, (h, w), host["resize_back_mode"])
        return x

    def _resize_back(self, x: torch.Tensor, size: tuple[int, int], mode_idx: torch.Tensor) -> torch.Tensor:
        """Upsample the LQ to the GT size: bicubic for all, or per-sample modes (one batched call per mode)."""
        if self.resize_back_mode == "bicubic":
            return torch.clamp(ops.resize(x, size=size, mode="bicubic"), 0, 1)
        out = x.new_empty(x.shape[0], x.shape[1], *size)
        for m, name in enumerate(ops.RESIZE_MODES):
            sel = (mode_idx == m).nonzero().flatten().tolist()
            if sel:
                idx = torch.tensor(sel, device=x.device)
                out[idx] = ops.resize(x[idx], size=size, mode=name)
        return torch.clamp(out, 0, 1)
