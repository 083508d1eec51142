"""``MetricSuite``: the protocol metrics (``fidesr.protocol``), built once, fed batch by batch.

Images are ``[B,3,H,W]`` float in ``[0,1]`` (GT same shape for full-reference metrics). Every metric is
pyiqa's, built with the protocol options, except SSIM, which by default runs a separable-filter
implementation of pyiqa's formula (same Y conversion, same 8-bit rounding, same constants; 15x faster on
CPU than pyiqa's float64 11x11 convolution and equal to it within 1e-6, see ``SeparableSSIM``;
``ssim_impl="pyiqa"`` selects pyiqa's own). FID is set-level and folder to folder (``fid_folders``).

Metrics whose weights are missing are either fatal (``required``) or skipped with one warning and shown
as ``n/a (weights missing)``; nothing ever runs on random weights. Stand-in networks (tests, plumbing)
are reported under ``<name>-standin`` so their numbers cannot pass for the real metric.

DDP: ``per_image`` rows are plain dicts; gather them from all ranks (``all_gather_object``), then
``MetricSuite.summarize(rows, names)`` gives the means (duplicates from sampler padding are dropped by
image name).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch

from fidesr import weights as W
from fidesr.devices import resolve_device
from fidesr.metrics.ssim import SeparableSSIM
from fidesr.protocol import (
    PROTOCOL,
    STANDIN_SUFFIX,
    SUITE_WIDE_OPTIONS,
    MetricSpec,
    ProtocolOptions,
    canonical_name,
    parse_metric_config,
)

NA_WEIGHTS = "n/a (weights missing)"

#: ``(sr, gt_or_None) -> [B]`` scores; for FID a feature extractor ``[N,3,299,299] in [0,255] -> [N,D]``.
Scorer = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Building metric networks (real weights only)
# --------------------------------------------------------------------------------------------------


@contextmanager
def _maniqa_vit_without_imagenet_init() -> Any:
    """pyiqa's MANIQA builds its ViT with ``timm.create_model(..., pretrained=True)`` (a Hugging Face
    download) and then loads the MANIQA checkpoint with ``strict=True``, which overwrites every ViT
    weight. The ImageNet initialisation is therefore dead weight: build the ViT without it."""
    import timm

    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def build_pyiqa_metric(
    spec: MetricSpec, options: Mapping[str, Any], device: torch.device, weights_dir: str | os.PathLike | None
) -> torch.nn.Module:
    """``pyiqa.create_metric`` for one spec, after verifying its weights, inside ``W.build_scope`` (downloads
    forbidden, every weight file read as data only).

    Raises:
        WeightsMissingError: a file is missing or corrupt (checked before pyiqa is called).
        WeightsNotDataError: a file holds more than tensors and plain values (nothing of it ran).
    """
    W.check_weights([spec.name], required=[spec.name], weights_dir=weights_dir)
    pyiqa = W.import_pyiqa()
    with ExitStack() as stack:
        # pyiqa/torchvision read the weights dir, download nothing, and their torch.load is our data-only one.
        stack.enter_context(W.build_scope(spec.name, weights_dir))
        if spec.name == "maniqa":
            stack.enter_context(_maniqa_vit_without_imagenet_init())
        model = pyiqa.create_metric(spec.pyiqa_name, device=device, **dict(options))
    return model.eval()


def fid_features(
    folder: str | os.PathLike,
    extractor: Scorer,
    *,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
) -> np.ndarray:
    """pyiqa's clean-FID features of every image under ``folder``: ``[N, D]`` float."""
    from pyiqa.archs.fid_arch import get_folder_features

    return get_folder_features(
        str(folder),
        extractor,
        num_workers=num_workers,
        batch_size=batch_size,
        device=device,
        mode="clean",
        verbose=False,
    )


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N,D]`` (pyiqa's implementation)."""
    from pyiqa.archs.fid_arch import frechet_distance as _fd

    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    return float(_fd(mu_a, cov_a, mu_b, cov_b))


def fid_folders(
    dir_a: str | os.PathLike,
    dir_b: str | os.PathLike,
    *,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = "cpu",
    feature_extractor: Scorer | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> float:
    """FID between two image folders (protocol: SR folder vs GT folder; pyiqa ``fid``, clean mode).

    Args:
        feature_extractor: ``None`` for the real FID Inception (its weights must be present); any
            callable ``[N,3,299,299] float in [0,255] -> [N,D]`` for plumbing tests.
    """
    dev = resolve_device(device)
    if feature_extractor is None:
        feature_extractor = build_pyiqa_metric(PROTOCOL["fid"], {}, dev, weights_dir).net.model
    else:
        W.import_pyiqa()
    fa = fid_features(dir_a, feature_extractor, device=dev, batch_size=batch_size, num_workers=num_workers)
    fb = fid_features(dir_b, feature_extractor, device=dev, batch_size=batch_size, num_workers=num_workers)
    return frechet_distance(fa, fb)


# --------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------


class MetricSuite:
    """The protocol metrics over a stream of images, per-image values kept.

    Args:
        metrics: names (``psnr ssim lpips dists fid niqe musiq maniqa clipiqa``; aliases accepted), or the
            ``conf/metrics`` mapping (name -> options, ``required: true`` allowed).
        protocol: the suite-wide options (:class:`fidesr.protocol.ProtocolOptions`: crop border, Y or RGB,
            colour space, SSIM implementation); None: the protocol's defaults.
        weights_dir: see ``fidesr.weights.store.resolve_weights_dir``.
        required: metrics that must have their weights (``WeightsMissingError`` otherwise); other
            metrics with missing weights are skipped (one warning) and tabulated as ``n/a``.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``; models live there.
        options: per-metric extra pyiqa options, overriding the suite-wide ones.
        stand_ins: replace a metric's network by a callable (tests, plumbing). Stand-ins are reported as
            ``<name>-standin``. For ``fid`` the callable is the feature extractor.
        fid_batch_size, fid_num_workers: feature extraction loader settings.
    """

    def __init__(
        self,
        metrics: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = ("psnr", "ssim"),
        protocol: ProtocolOptions | None = None,
        weights_dir: str | os.PathLike | None = None,
        required: Iterable[str] = ("psnr", "ssim"),
        device: str | torch.device | None = "cpu",
        *,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        stand_ins: Mapping[str, Scorer] | None = None,
        fid_batch_size: int = 8,
        fid_num_workers: int = 0,
    ) -> None:
        names, cfg_required, cfg_options = parse_metric_config(metrics)
        if len(set(names)) != len(names):
            raise ValueError(f"metric listed twice: {names}")
        self.protocol = protocol if protocol is not None else ProtocolOptions()
        self.device = resolve_device(device)
        self.weights_dir = W.resolve_weights_dir(weights_dir)  # read per build, no process-wide change
        self.fid_batch_size, self.fid_num_workers = fid_batch_size, fid_num_workers
        stand_ins = {canonical_name(k): v for k, v in (stand_ins or {}).items()}
        if set(stand_ins) - set(names):
            raise ValueError(f"stand-ins for metrics not selected: {sorted(set(stand_ins) - set(names))}")
        required_set = {canonical_name(r) for r in (*required, *cfg_required)}

        suite_wide = self.protocol.pixel_options()
        self.specs: dict[str, MetricSpec] = {}  # reported name -> spec, in the given order
        self.skipped: dict[str, str] = {}  # reported name -> reason shown in tables
        self._scorers: dict[str, Scorer] = {}
        self._fid_extractor: Scorer | None = None
        self.fid_name: str | None = None

        real = [n for n in names if n not in stand_ins]
        available = set(W.check_weights(real, required_set, self.weights_dir))
        for name in names:
            spec = PROTOCOL[name]
            reported = name + STANDIN_SUFFIX if name in stand_ins else name
            self.specs[reported] = spec
            if spec.kind == "distribution":
                self.fid_name = reported
            if name in stand_ins:
                scorer = stand_ins[name]
                if isinstance(scorer, torch.nn.Module):
                    scorer = scorer.to(self.device).eval()
            elif name not in available:
                self.skipped[reported] = NA_WEIGHTS
                continue
            else:
                opts = {
                    **spec.options,
                    **{k: suite_wide[k] for k in SUITE_WIDE_OPTIONS.get(name, ())},
                    **cfg_options.get(name, {}),
                    **dict((options or {}).get(name, {})),
                }
                scorer = self._build(spec, opts, self.protocol.ssim_impl)
            if spec.kind == "distribution":
                self._fid_extractor = scorer
            else:
                self._scorers[reported] = scorer
        self._rows: list[dict[str, Any]] = []

    def _build(self, spec: MetricSpec, opts: dict[str, Any], ssim_impl: str) -> Scorer:
        if spec.name == "ssim" and ssim_impl == "separable":
            W.import_pyiqa()  # SeparableSSIM uses pyiqa's colour conversion
            extra = set(opts) - {"test_y_channel", "color_space", "crop_border"}
            if extra:
                raise ValueError(f"SSIM options {sorted(extra)} need ssim_impl='pyiqa'")
            return SeparableSSIM(**opts).to(self.device)
        model = build_pyiqa_metric(spec, opts, self.device, self.weights_dir)
        if spec.name == "fid":
            return model.net.model  # the Inception feature extractor; FID itself is folder-level
        return model

    # ---- description ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """All selected metrics as reported (stand-ins suffixed), including skipped ones and FID."""
        return list(self.specs)

    @property
    def active(self) -> list[str]:
        """Per-image metrics that run."""
        return list(self._scorers)

    @property
    def has_fid(self) -> bool:
        """FID was selected and can run."""
        return self._fid_extractor is not None

    def lower_better(self, name: str) -> bool:
        return self.specs[name].lower_better

    # ---- per-image metrics --------------------------------------------------------------------------

    @torch.no_grad()
    def score(
        self, sr: torch.Tensor, gt: torch.Tensor | None = None, *, allow_missing_gt: bool = False
    ) -> dict[str, torch.Tensor]:
        """Scores of one batch, without touching the accumulated state.

        Args:
            sr: ``[B,3,H,W]`` in [0,1] (excursions up to 1e-3 are clamped; larger ones raise).
            gt: same shape, required when a full-reference metric is active.
            allow_missing_gt: with ``gt=None``, leave full-reference metrics out instead of raising.
        Returns:
            ``{metric: [B] float64 on CPU}`` for every active per-image metric (that could run).
        """
        sr = _check_images(sr, "sr").to(self.device)
        if gt is not None:
            gt = _check_images(gt, "gt").to(self.device)
            if gt.shape != sr.shape:
                raise ValueError(f"sr {tuple(sr.shape)} and gt {tuple(gt.shape)} differ in shape")
        out: dict[str, torch.Tensor] = {}
        for name, scorer in self._scorers.items():
            if self.specs[name].kind == "full-reference":
                if gt is None and allow_missing_gt:
                    continue
                if gt is None:
                    raise ValueError(f"{name} is full-reference: pass gt (or drop it from the metrics)")
                val = scorer(sr, gt)
            else:
                val = scorer(sr)
            val = torch.as_tensor(val).detach().to("cpu", torch.float64).reshape(-1)
            if val.numel() != sr.shape[0]:
                raise RuntimeError(f"{name} returned {val.numel()} values for a batch of {sr.shape[0]}")
            out[name] = val
        return out

    def update(
        self, sr: torch.Tensor, gt: torch.Tensor | None = None, names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Score a batch and keep one row per image: ``{"name": ..., metric: float, ...}``."""
        if names is None:
            names = [f"img_{len(self._rows) + i:06d}" for i in range(sr.shape[0])]
        if len(names) != sr.shape[0]:
            raise ValueError(f"{len(names)} names for a batch of {sr.shape[0]}")
        scores = self.score(sr, gt)
        rows = [{"name": str(n), **{m: float(v[i]) for m, v in scores.items()}} for i, n in enumerate(names)]
        self._rows.extend(rows)
        return rows

    @property
    def per_image(self) -> list[dict[str, Any]]:
        """Rows added so far (copies), in arrival order."""
        return [dict(r) for r in self._rows]

    def load_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the state by ``rows`` (e.g. gathered from all DDP ranks)."""
        self._rows = [dict(r) for r in rows]

    def compute(self) -> dict[str, float]:
        """Means over images of every active per-image metric (FID: ``fid()``)."""
        return self.summarize(self._rows, self.active)

    @staticmethod
    def summarize(rows: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[str, float]:
        """Mean per metric over ``rows``; a repeated image name counts once (DDP sampler padding)."""
        seen: set[str] = set()
        unique = []
        for r in rows:
            if r["name"] not in seen:
                seen.add(r["name"])
                unique.append(r)
        out = {}
        for n in names:
            vals = [float(r[n]) for r in unique if n in r]
            out[n] = math.fsum(vals) / len(vals) if vals else float("nan")
        return out

    def reset(self) -> None:
        self._rows = []

    # ---- set-level ----------------------------------------------------------------------------------

    def fid(self, sr_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> float:
        """FID between two folders with the suite's (already built) feature extractor."""
        if self._fid_extractor is None:
            raise RuntimeError("FID is not available in this suite (not selected, or weights missing)")
        fa = fid_features(
            sr_dir,
            self._fid_extractor,
            device=self.device,
            batch_size=self.fid_batch_size,
            num_workers=self.fid_num_workers,
        )
        fb = fid_features(
            gt_dir,
            self._fid_extractor,
            device=self.device,
            batch_size=self.fid_batch_size,
            num_workers=self.fid_num_workers,
        )
        return frechet_distance(fa, fb)

    # ---- tables -------------------------------------------------------------------------------------

    def format(self, name: str, value: float | None) -> str:
        """Table cell: the value with the protocol's precision, or why there is none."""
        if name in self.skipped:
            return self.skipped[name]
        return format_value(name, value)


def format_value(name: str, value: float | None) -> str:
    """A table cell: 4 decimals (the precision of the published tables), ``-`` for no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def _check_images(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected a [B,3,H,W] tensor, got {getattr(x, 'shape', type(x))}")
    x = x.detach()
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected float images in [0,1], got {x.dtype}")
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{what}: values must be in [0,1], got [{lo:.4f}, {hi:.4f}] (a [-1,1] image?)")
    return x.clamp(0, 1)
