"""Figures of the ablation report: paired differences with their intervals around zero, the perception-
distortion plane, smoothed training curves and validation curves. PNG, 120 dpi, Agg backend (no display).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fidesr.metrics.tables import header
from fidesr.report.aggregate import Configuration
from fidesr.report.jobs import FIXED, PERCEPTUAL, is_real_metric, lower_better, metric_order

#: config label -> series key -> one curve per seed (step -> value)
Series = Mapping[str, Mapping[str, list[dict[int, float]]]]
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Line styles per configuration: identical curves (a component that never switched on) stay visible.
STYLES = ("-", "--", "-.", ":")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str, rect: tuple[float, ...] | None = None) -> Path:
    """Title, lay out, write at 120 dpi and close a figure; returns ``path``."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def colors(n: int) -> list[Any]:
    cmap = pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled to 0)."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def smoothing_weight(n_points: int) -> float:
    """EMA weight for a curve of ``n_points``: a span of about a tenth of the curve (none below 20 points)."""
    span = max(1, n_points // 10)
    return 1 - 2 / (span + 1)


def _mean_curve(
    curves: Sequence[Mapping[int, float]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    mean = [statistics.fmean(c[s] for c in curves) for s in steps]
    return steps, mean, [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps]


def _informative(series: Series, key: str) -> bool:
    """A panel worth drawing: some values, and not all the same (a flat all-zero loss says nothing)."""
    values = {round(v, 12) for per in series.values() for cv in per.get(key, []) for v in cv.values()}
    return len(values) > 1


def curves_figure(
    confs: Sequence[Configuration],
    series: Series,
    keys: Sequence[str],
    path: Path,
    title: str,
    ylabel: Callable[[str], str] | None = None,
    smooth: bool = False,
) -> tuple[Path | None, list[str]]:
    """One panel per informative key, one line per configuration (mean over seeds, min-max band).

    ``smooth``: the mean as an EMA line (``smoothing_weight``) over its raw points drawn faint. Returns the
    figure (None when no panel is left) and the keys dropped as constant or empty.
    """
    dropped = [k for k in keys if not _informative(series, k)]
    keys = [k for k in keys if k not in dropped]
    if not keys:
        return None, dropped
    plt = pyplot()
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, (c, color) in enumerate(zip(confs, colors(len(confs)), strict=True)):
            curves = [cv for cv in series.get(c.label, {}).get(key, []) if cv]
            steps, mean, lo, hi = _mean_curve(curves)
            if not steps:
                continue
            if smooth:
                ax.plot(steps, mean, color=color, lw=0.6, alpha=0.25)
                mean = ema(mean, smoothing_weight(len(mean)))
            ax.plot(
                steps,
                mean,
                color=color,
                label=c.label,
                lw=1.6,
                ls=STYLES[i % len(STYLES)],
                marker=MARKERS[i % len(MARKERS)] if len(steps) < 8 else None,
                ms=4,
            )
            if len(curves) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.12, lw=0)
        ax.set_title(ylabel(key) if ylabel else key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False
    )
    return save_figure(fig, path, title, rect=(0, 0.08 if nrow == 1 else 0.05, 1, 0.95)), dropped


def _collect(
    confs: Sequence[Configuration],
    rows_of: Callable[[Any], list[dict[str, Any]]],
    wanted: Callable[[str], bool],
) -> tuple[dict[str, dict[str, list[dict[int, float]]]], list[str]]:
    series: dict[str, dict[str, list[dict[int, float]]]] = {}
    keys: list[str] = []
    for c in confs:
        for j in c.jobs:
            rows = rows_of(j)
            cols = [k for k in (rows[0] if rows else {}) if wanted(k)]
            keys += [k for k in cols if k not in keys]
            for k in cols:
                curve = {int(r["step"]): float(r[k]) for r in rows if isinstance(r.get(k), (int, float))}
                series.setdefault(c.label, {}).setdefault(k, []).append(curve)
    return series, keys


def plot_training_curves(confs: Sequence[Configuration], path: Path) -> tuple[Path | None, list[str]]:
    """``train/loss/*`` of the CSVLogger per configuration, EMA-smoothed; (figure, dropped panels)."""
    series, keys = _collect(confs, lambda j: j.train_log(), lambda k: k.startswith("train/loss/"))
    keys = sorted(keys, key=lambda k: (k.endswith("/total"), k))  # the total last
    informative = [k for k in keys if _informative(series, k)][:6]
    figure, dropped = curves_figure(
        confs,
        series,
        informative,
        path,
        "Training losses (mean over seeds; from 20 logged points on, an EMA over the faint raw points)",
        ylabel=lambda k: k.removeprefix("train/"),
        smooth=True,
    )
    return figure, [k for k in keys if not _informative(series, k)] + dropped


def plot_val_curves(
    confs: Sequence[Configuration], set_name: str, path: Path
) -> tuple[Path | None, list[str]]:
    """Validation metrics over steps per configuration (from the jobs' validation tables)."""
    series, keys = _collect(
        confs, lambda j: j.val_history(set_name), lambda k: k not in FIXED and lower_better(k) is not None
    )
    return curves_figure(
        confs, series, metric_order(keys), path, f"Validation metrics on {set_name!r}", ylabel=header
    )


def plot_perception_distortion(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """PSNR (x) against each measured perceptual metric (y), one marker and colour per configuration named
    in a legend (never as text beside the points, which overlap when configurations are close); error bars
    are the std over seeds. None without both axes."""
    have = {m for r in rows for m, v in r.items() if isinstance(v, float)}
    ys = [m for m in PERCEPTUAL if m in have and is_real_metric(m)][:3]
    if "psnr" not in have or not ys:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 4.0), squeeze=False)
    cols = colors(len(rows))
    for ax, m in zip(axes.flat, ys, strict=True):
        for i, r in enumerate(rows):
            if isinstance(r.get("psnr"), float) and isinstance(r.get(m), float):
                # Shrinking markers: a configuration on top of another (same values) leaves it visible.
                ax.errorbar(
                    r["psnr"],
                    r[m],
                    xerr=r.get("psnr_std"),
                    yerr=r.get(f"{m}_std"),
                    fmt=MARKERS[i % len(MARKERS)],
                    color=cols[i],
                    ms=max(4, 11 - 2 * i),
                    capsize=3,
                    label=r["configuration"],
                    alpha=0.9,
                )
        ax.set_xlabel(header("psnr") + "  (distortion: right is better)")
        ax.set_ylabel(header(m) + ("  (lower is better)" if lower_better(m) else "  (higher is better)"))
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = max(1, min(len(labels), int(4.8 * len(ys) // 2.4)))  # about 2.4 inches per legend entry
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    seeds = max((r.get("n_seeds") or 1) for r in rows)
    note = "error bars: std over seeds" if seeds > 1 else "one seed: no error bars"
    rows_of_legend = math.ceil(len(labels) / ncol)
    return save_figure(
        fig, path, f"Perception-distortion ({note})", rect=(0, 0.06 * rows_of_legend + 0.02, 1, 0.95)
    )


def plot_deltas(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], baseline: str, path: Path
) -> Path | None:
    """Dot-and-whisker plot of each configuration's paired difference from ``baseline`` with its 95%
    bootstrap interval, one panel per metric, zero marked; filled dots where the interval excludes zero."""
    metrics = [m for m in metrics if any(isinstance(r.get(f"{m}_delta"), float) for r in rows)]
    others = [r for r in rows if r["configuration"] != baseline]
    if not metrics or not others:
        return None
    plt = pyplot()
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.6 * ncol, 0.5 * len(others) * nrow + 1.6 * nrow), squeeze=False
    )
    cols = colors(len(rows))
    for ax, m in zip(axes.flat, metrics, strict=False):
        for y, r in enumerate(others):
            d, lo, hi = (r.get(f"{m}_{k}") for k in ("delta", "ci_low", "ci_high"))
            if not isinstance(d, float):
                continue
            color = cols[rows.index(r)]
            ax.plot([lo, hi], [y, y], color=color, lw=2)
            ax.plot([d], [y], "o", ms=7, color=color, mfc=color if (lo > 0 or hi < 0) else "white", mew=1.5)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(others)), [str(r["configuration"]) for r in others], fontsize=7)
        ax.set_ylim(-0.6, len(others) - 0.4)
        ax.invert_yaxis()
        better = "← better" if lower_better(m) else "better →"
        ax.set_xlabel(f"Δ {header(m)} vs baseline   ({better})", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    n = next(r for r in others if isinstance(r.get("n_images"), int))
    size = f"{n['n_images']} images" + (f" x {n['n_seeds']} seeds" if (n.get("n_seeds") or 1) > 1 else "")
    return save_figure(
        fig,
        path,
        f"Paired differences from {baseline} (95% bootstrap interval, {size}; filled: interval excludes 0)",
    )
