"""The evaluation protocol in one place: which metrics exist, what pyiqa calls them, their direction,
kind, default options and the weight files they need.

The protocol is the one the StableSR / OSEDiff / PiSA-SR / FiDeSR tables use (DESIGN.md section 3):
pyiqa ``psnr``/``ssim`` on the Y channel of YCbCr (``color_space='ycbcr'``; pyiqa's default Y is a
different formula, 1.32 dB off) without border crop, ``lpips`` (AlexNet), ``dists``, ``clipiqa``,
``niqe``, ``musiq`` (KonIQ), ``maniqa-pipal`` (not pyiqa's default ``maniqa``), and ``fid``
folder-to-folder (SR folder vs GT folder). Per-image values are averaged; FID is computed once per set.

Everything else (``MetricSuite``, the validation callback, ``fidesr-eval``, ``fidesr-weights``) reads
these specs, so changing the protocol means changing this file only. It imports nothing of fidesr and
lives outside ``fidesr.metrics`` because the weight-file registry reads it too (which files a metric needs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Kind = Literal["full-reference", "no-reference", "distribution"]

#: Suffix of the reported name of a metric whose network was replaced by a stand-in (tests, plumbing).
#: A stand-in's numbers must never pass for the real metric, so they carry a different name everywhere.
STANDIN_SUFFIX = "-standin"


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the protocol.

    Attributes:
        name: our name, used in log keys (``val/<set>/<name>``), tables and configs.
        pyiqa_name: the ``pyiqa.create_metric`` id.
        kind: ``full-reference`` (needs GT per image), ``no-reference`` or ``distribution`` (set-level,
            folder to folder: FID).
        lower_better: direction; ``monitor_mode()`` turns it into ModelCheckpoint's ``mode``.
        weights: keys into ``fidesr.weights.FILES`` of every file the metric needs.
        options: protocol options passed to ``pyiqa.create_metric``.
        description: one line for tables and ``fidesr-weights status``.
    """

    name: str
    pyiqa_name: str
    kind: Kind
    lower_better: bool
    weights: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""

    @property
    def needs_gt(self) -> bool:
        """True for metrics that compare against a reference (per image or per set)."""
        return self.kind in ("full-reference", "distribution")


# Y of YCbCr, no border crop: the columns everyone compares against.
_PIXEL_PROTOCOL = MappingProxyType({"test_y_channel": True, "color_space": "ycbcr", "crop_border": 0})

PROTOCOL: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("psnr", "psnr", "full-reference", False, (), _PIXEL_PROTOCOL, "PSNR (dB), Y of YCbCr"),
        MetricSpec("ssim", "ssim", "full-reference", False, (), _PIXEL_PROTOCOL, "SSIM, Y of YCbCr"),
        MetricSpec(
            "lpips",
            "lpips",
            "full-reference",
            True,
            ("alexnet-imagenet", "lpips-alex-v0.1"),
            description="LPIPS v0.1, AlexNet",
        ),
        MetricSpec(
            "dists",
            "dists",
            "full-reference",
            True,
            ("vgg16-imagenet", "dists-alpha-beta"),
            description="DISTS, VGG16",
        ),
        MetricSpec(
            "fid",
            "fid",
            "distribution",
            True,
            ("fid-inception",),
            description="FID, clean mode, SR folder vs GT folder",
        ),
        MetricSpec(
            "niqe",
            "niqe",
            "no-reference",
            True,
            ("niqe-params",),
            description="NIQE (pyiqa default: Y of YIQ)",
        ),
        MetricSpec(
            "musiq",
            "musiq",
            "no-reference",
            False,
            ("musiq-koniq",),
            description="MUSIQ trained on KonIQ-10k",
        ),
        MetricSpec(
            "maniqa",
            "maniqa-pipal",
            "no-reference",
            False,
            ("maniqa-pipal",),
            description="MANIQA trained on PIPAL",
        ),
        MetricSpec(
            "clipiqa", "clipiqa", "no-reference", False, ("clip-rn50",), description="CLIP-IQA, CLIP RN50"
        ),
    )
}

#: Other spellings users type; mapped to our names.
ALIASES: dict[str, str] = {"maniqa-pipal": "maniqa", "lpips-alex": "lpips", "clip-iqa": "clipiqa"}

#: Options of the pixel metrics that the suite-wide arguments (crop_border, test_y_channel, color_space)
#: control. crop_border also applies to NIQE, as in BasicSR.
SUITE_WIDE_OPTIONS: dict[str, tuple[str, ...]] = {
    "psnr": ("crop_border", "test_y_channel", "color_space"),
    "ssim": ("crop_border", "test_y_channel", "color_space"),
    "niqe": ("crop_border",),
}


@dataclass(frozen=True)
class ProtocolOptions:
    """The suite-wide protocol options, declared once: ``conf/protocol/default.yaml`` builds this for
    ``fidesr-train``'s validation and for ``fidesr-eval`` alike, and ``MetricSuite`` takes it. Per-metric
    options in ``conf/metrics`` (e.g. ``+metrics.psnr.crop_border=4``) override it for one metric.

    Attributes:
        crop_border: pixels cropped on each side for PSNR, SSIM and NIQE (protocol: 0; 4 reproduces
            BasicSR-style tables).
        test_y_channel: PSNR/SSIM on the Y channel (protocol) or on RGB.
        color_space: the Y of which space (protocol: ``ycbcr``; pyiqa's own default is ``yiq``, 1.32 dB off).
        ssim_impl: ``"separable"`` (fidesr's separable-filter SSIM, pyiqa's value within 1e-6, faster) or
            ``"pyiqa"``.
    """

    crop_border: int = 0
    test_y_channel: bool = True
    color_space: str = "ycbcr"
    ssim_impl: Literal["separable", "pyiqa"] = "separable"

    def __post_init__(self) -> None:
        if (
            isinstance(self.crop_border, bool)
            or not isinstance(self.crop_border, int)
            or self.crop_border < 0
        ):
            raise ValueError(f"protocol.crop_border must be a whole number >= 0, got {self.crop_border!r}")
        if not isinstance(self.test_y_channel, bool):
            raise ValueError(f"protocol.test_y_channel must be true or false, got {self.test_y_channel!r}")
        if self.ssim_impl not in ("separable", "pyiqa"):
            raise ValueError(f"protocol.ssim_impl must be 'separable' or 'pyiqa', got {self.ssim_impl!r}")

    def pixel_options(self) -> dict[str, Any]:
        """The pyiqa options these set for the pixel metrics (``crop_border``, ``test_y_channel``,
        ``color_space``)."""
        return {
            "crop_border": self.crop_border,
            "test_y_channel": self.test_y_channel,
            "color_space": self.color_space,
        }

    def describe(self) -> str:
        """One line for reports: ``PSNR/SSIM on Y of ycbcr, crop_border 0``."""
        on = f"Y of {self.color_space}" if self.test_y_channel else "RGB"
        return f"PSNR/SSIM on {on}, crop_border {self.crop_border}"


def canonical_name(name: str) -> str:
    """Our name for ``name`` (accepts aliases, any case, and a stand-in suffix is kept).

    Raises:
        KeyError: with the list of known metrics when ``name`` is not one of them.
    """
    base, standin = _split_standin(name.strip().lower())
    base = ALIASES.get(base, base)
    if base not in PROTOCOL:
        raise KeyError(
            f"unknown metric {name!r}; known: {', '.join(PROTOCOL)} (aliases: {', '.join(ALIASES)})"
        )
    return base + standin


def get_spec(name: str) -> MetricSpec:
    """The spec of a metric, given its name, an alias, a stand-in name or a log key (``val/set/psnr``)."""
    base, _ = _split_standin(name.strip().lower().rsplit("/", 1)[-1])
    return PROTOCOL[canonical_name(base)]


def monitor_mode(metric: str) -> Literal["min", "max"]:
    """``"min"`` or ``"max"`` for ``ModelCheckpoint(mode=...)``/``EarlyStopping``.

    Accepts a metric name (``"lpips"``) or a full log key (``"val/realsr/lpips"``).
    """
    return "min" if get_spec(metric).lower_better else "max"


def _split_standin(name: str) -> tuple[str, str]:
    if name.endswith(STANDIN_SUFFIX):
        return name[: -len(STANDIN_SUFFIX)], STANDIN_SUFFIX
    return name, ""


def parse_metric_config(
    metrics: Sequence[str] | Mapping[str, Mapping[str, Any] | None],
) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """Normalise a metric selection to ``(names, required, per-metric options)``.

    Accepts a list of names or the Hydra form of ``conf/metrics`` (a mapping name -> options, where an
    option ``required: true`` marks the metric as required).
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        names, required, options = [], [], {}
        for name, opts in metrics.items():
            n = canonical_name(str(name))
            opts = dict(opts or {})
            if opts.pop("required", False):
                required.append(n)
            names.append(n)
            options[n] = opts
        return names, required, options
    return [canonical_name(str(m)) for m in metrics], [], {}
