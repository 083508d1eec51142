"""Visual comparison: the same zoomed crops of LQ (nearest), bicubic, every configuration and GT, side by
side (``comparisons.png``), for a few validation images.

Crops are chosen where the configurations differ most: for each image, the per-pixel standard deviation
of the configurations' SR images (mean over RGB) is averaged over every ``crop`` x ``crop`` window, and the
window with the largest mean is the crop; the images with the largest such windows are shown. Or boxes are
given (``name:x,y,size``, GT pixels). Images come from each configuration's first seed at its last
validation (``val/step_<N>/<set>/<name>.png``) and the inputs the metrics callback writes once
(``val/gt/<set>``, ``val/lq/<set>``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fidesr.metrics.images import read_for_metrics
from fidesr.report.aggregate import Configuration
from fidesr.report.plots import pyplot, save_figure


@dataclass(frozen=True)
class Box:
    """A square crop of image ``name``: top-left ``(x, y)`` and side ``size`` in GT pixels."""

    name: str
    x: int
    y: int
    size: int

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"brick_76_76:10,20,32"`` -> Box; ValueError naming the expected form otherwise."""
        name, _, rest = text.rpartition(":")
        try:
            x, y, size = (int(v) for v in rest.split(","))
        except ValueError:
            raise ValueError(f"crop box {text!r}: expected NAME:X,Y,SIZE (GT pixels)") from None
        if not name or size <= 0:
            raise ValueError(f"crop box {text!r}: expected NAME:X,Y,SIZE with SIZE > 0")
        return cls(name, x, y, size)


@dataclass
class Comparison:
    """One image's crops: column label -> [3, size, size] in [0,1], and each crop's PSNR against GT."""

    box: Box
    crops: dict[str, torch.Tensor]
    psnr: dict[str, float]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def most_different_crop(srs: Sequence[torch.Tensor], size: int) -> tuple[int, int, float]:
    """(x, y, score): the ``size`` window where the SR images [3,H,W] differ most (mean per-pixel std)."""
    spread = torch.stack(srs).mean(dim=1).std(dim=0, correction=0)  # [H, W]
    windows = F.avg_pool2d(spread[None, None], size, stride=1)[0, 0]  # [H-size+1, W-size+1]
    flat = int(windows.argmax())
    y, x = divmod(flat, windows.shape[1])
    return x, y, float(windows.max())


def collect(
    confs: Sequence[Configuration],
    set_name: str,
    n_images: int = 3,
    crop: int = 32,
    boxes: Sequence[Box] = (),
) -> tuple[list[Comparison], str]:
    """Crops for ``boxes`` (or the ``n_images`` most different images) and a sentence saying how they were
    chosen; ([], reason) when the jobs lack the images."""
    jobs = [min(c.jobs, key=lambda j: str(j.seed)) for c in confs]
    ref = next((j for j in jobs if j.image_dir(set_name, "gt").is_dir()), None)
    if ref is None:
        return (
            [],
            f"no val/gt/{set_name} in the job folders (written by the metrics callback with save_images)",
        )
    names = sorted(p.stem for p in ref.image_dir(set_name, "gt").glob("*.png"))
    names = [
        n
        for n in names
        if all(j.image(set_name, n).is_file() for j in jobs) and ref.image(set_name, n, "lq").is_file()
    ]
    if not names:
        return [], f"no SR images of the last validation of {set_name!r} in every configuration"
    srs = {n: [read_for_metrics(j.image(set_name, n))[0] for j in jobs] for n in names}
    if boxes:
        missing = [b.name for b in boxes if b.name not in srs]
        if missing:
            raise ValueError(
                f"crop box image(s) {missing} not in set {set_name!r}; images: {', '.join(names)}"
            )
        how = "boxes given on the command line"
    else:
        crop = min(crop, *srs[names[0]][0].shape[-2:])  # images smaller than the crop: the whole image
        picks = sorted(((n, *most_different_crop(srs[n], crop)) for n in names), key=lambda t: -t[3])[
            :n_images
        ]
        boxes = [Box(n, x, y, crop) for n, x, y, _ in picks]
        how = (
            f"the {crop} px window (GT pixels) where the configurations' SR images differ most (largest mean "
            f"per-pixel std across configurations), in the {len(boxes)} images where that spread is largest"
        )
    out = []
    for b in boxes:
        gt, lq = (
            read_for_metrics(ref.image(set_name, b.name, "gt"))[0],
            read_for_metrics(ref.image(set_name, b.name, "lq")),
        )
        scale = gt.shape[-1] // lq.shape[-1]
        bicubic = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)[0]
        nearest = F.interpolate(lq, size=gt.shape[-2:], mode="nearest")[0]

        def cut(img: torch.Tensor, b: Box = b) -> torch.Tensor:
            return img[:, b.y : b.y + b.size, b.x : b.x + b.size]

        crops = {f"LQ (nearest, x{scale})": cut(nearest), "bicubic": cut(bicubic)}
        crops |= {c.label: cut(sr) for c, sr in zip(confs, srs[b.name], strict=True)}
        crops["GT"] = cut(gt)
        psnr = {k: _psnr(v, crops["GT"]) for k, v in crops.items() if k != "GT"}
        out.append(Comparison(b, crops, psnr))
    return out, how


def plot_comparisons(comparisons: Sequence[Comparison], path: Path, seed_note: str) -> Path:
    """The grid: one row per image, one column per source, each crop labelled with its PSNR against GT."""
    plt = pyplot()
    labels = list(comparisons[0].crops)
    fig, axes = plt.subplots(
        len(comparisons),
        len(labels),
        figsize=(1.75 * len(labels), 1.95 * len(comparisons) + 0.5),
        squeeze=False,
    )
    for row, comp in zip(axes, comparisons, strict=True):
        for ax, label in zip(row, labels, strict=True):
            ax.imshow(np.asarray(comp.crops[label].permute(1, 2, 0)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if label in comp.psnr:
                ax.set_xlabel(f"{comp.psnr[label]:.2f} dB", fontsize=7)
            if comp is comparisons[0]:
                ax.set_title(label.replace(",", ",\n"), fontsize=7)
        b = comp.box
        row[0].set_ylabel(f"{b.name}\nx={b.x} y={b.y} {b.size}px", fontsize=6)
    return save_figure(
        fig, path, f"Same crops, every configuration ({seed_note}; under each crop: its PSNR vs GT)"
    )
