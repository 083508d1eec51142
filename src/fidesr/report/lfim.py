"""The report of an LFIM strength sweep (``fidesr-eval -m ... lfim.lf_scale=... lfim.hf_scale=...``): one
checkpoint evaluated over a grid of inference-time strengths, rows (lf_scale, hf_scale), the best value of
each column in bold (the trade-off is the point: no row is best everywhere), ``lfim.md`` / ``lfim.csv``,
``lfim_tradeoff.png`` and ``lfim_strength.png``."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fidesr.metrics.tables import header, write_csv
from fidesr.protocol import PROTOCOL
from fidesr.report import tracker
from fidesr.report.aggregate import mark_best
from fidesr.report.jobs import FIDELITY, PERCEPTUAL, Job, discover_jobs, is_real_metric, metric_order
from fidesr.report.plots import colors, pyplot, save_figure
from fidesr.report.provenance import provenance_warnings
from fidesr.report.tables import failure_lines, markdown_rows


def _strength(job: Job, key: str) -> float | None:
    value = job.override_map.get(f"lfim.{key}")
    if value is None:
        value = job.select(f"lfim.{key}")
    try:
        return float(value) if value not in (None, "null") else None
    except (TypeError, ValueError):
        return None


def plot_lfim(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], out: Path) -> list[Path]:
    """Trade-off (fidelity vs perception, one line per hf_scale over rising lf_scale) and metric vs strength."""
    plt = pyplot()
    files = []
    hfs = sorted({r["hf_scale"] for r in rows if r["hf_scale"] is not None})
    hf_color = dict(zip(hfs, colors(len(hfs)), strict=True))
    fid = [m for m in FIDELITY if m in metrics]
    per = [m for m in PERCEPTUAL if m in metrics and is_real_metric(m)]

    def lines(ax: Any, x: str | None, y: str) -> None:
        for hf in hfs:
            pts = sorted(
                (r["lf_scale"], r.get(x) if x else r["lf_scale"], r.get(y))
                for r in rows
                if r["hf_scale"] == hf
                and isinstance(r.get(y), float)
                and (x is None or isinstance(r.get(x), float))
            )
            if not pts:
                continue
            ax.plot(
                [p[1] for p in pts],
                [p[2] for p in pts],
                "-o",
                color=hf_color[hf],
                ms=4,
                label=f"hf_scale={hf:g}",
            )
            if x is not None:
                for lf, px, py in pts:
                    ax.annotate(f"lf {lf:g}", (px, py), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.grid(alpha=0.3)

    if fid and per:
        pairs = [(f, p) for p in per for f in fid]
        fig, axes = plt.subplots(len(per), len(fid), figsize=(4.6 * len(fid), 3.8 * len(per)), squeeze=False)
        for ax, (f, p) in zip(axes.flat, pairs, strict=True):
            lines(ax, p, f)
            ax.set_xlabel(header(p))
            ax.set_ylabel(header(f))
        axes.flat[0].legend(fontsize=7)
        files.append(
            save_figure(
                fig, out / "lfim_tradeoff.png", "LFIM trade-off: fidelity vs perception as the strengths rise"
            )
        )
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.4 * nrow), squeeze=False)
    for ax, m in zip(axes.flat, metrics, strict=False):
        lines(ax, None, m)
        ax.set_xlabel("lf_scale")
        ax.set_title(header(m), fontsize=10)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    files.append(save_figure(fig, out / "lfim_strength.png", "Metrics vs LFIM strength"))
    return files


def lfim_report(sweep_dir: Path, wandb: str = "auto", strict: bool = False) -> int:
    """LFIM strength sweep report (``fidesr-eval -m ... lfim.lf_scale=... lfim.hf_scale=...``)."""
    jobs = discover_jobs(sweep_dir, evaluation=True)
    done = [j for j in jobs if j.final]
    if not done:
        print(
            f"fidesr-report --lfim: no fidesr-eval results (summary.csv) in the job folders of {sweep_dir}",
            file=sys.stderr,
        )
        return 1
    rows = []
    for j in done:
        values = next(iter(j.final.values()))
        lf, hf = _strength(j, "lf_scale"), _strength(j, "hf_scale")
        rows.append(
            {
                "configuration": f"lf={lf if lf is not None else 'default'},hf={hf if hf is not None else 'default'}",
                "lf_scale": lf,
                "hf_scale": hf,
                "job": j.name,
                "git_commit": j.commit[:12],
                "source": "this evaluation",
                **values,
            }
        )
    rows.sort(
        key=lambda r: (
            r["lf_scale"] if r["lf_scale"] is not None else -1,
            r["hf_scale"] if r["hf_scale"] is not None else -1,
        )
    )
    metrics = metric_order(m for r in rows for m in r if m in PROTOCOL or m.endswith("-standin"))
    mark_best(rows, metrics)
    # fidesr-eval writes no run_info.json; the checkpoint (below) is what ties these jobs together.
    warnings = [
        w
        for w in provenance_warnings(done, [])
        if not w.startswith(("configurations differ", f"{len(done)} job(s) have no run_info"))
    ]
    ckpts = {str(j.select("checkpoint")) for j in done if j.select("checkpoint") is not None}
    if len(ckpts) > 1:
        warnings.append(f"jobs evaluated different checkpoints: {', '.join(sorted(ckpts))}")
    files = (
        plot_lfim([r for r in rows if r["lf_scale"] is not None], metrics, sweep_dir)
        if any(r["lf_scale"] is not None for r in rows)
        else []
    )
    md = [
        f"# LFIM strengths: `{sweep_dir.name}`",
        "",
        f"- checkpoint: {', '.join(sorted(ckpts)) or 'unknown'}; {len(done)} of {len(jobs)} jobs with results",
        "- **bold**: best per column; the trade-off is the point: no row is best everywhere",
        "",
    ]
    if warnings:
        md += ["## Warnings", "", *(f"- ⚠ {w}" for w in warnings), ""]
    md += [markdown_rows(rows, ["lf_scale", "hf_scale"], metrics, bold_best=True), ""]
    if files:
        md += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in files), ""]
    md += failure_lines([j for j in jobs if not j.final and j.status != "completed"] or [])
    cols = ["lf_scale", "hf_scale", *metrics, "best", "job", "git_commit"]
    csv_rows = [{**r, "best": ";".join(r["best"])} for r in rows]
    write_csv(sweep_dir / "lfim.csv", csv_rows, cols)
    note = tracker.maybe_upload(
        wandb, sweep_dir, jobs, {"lfim": tracker.table(csv_rows, cols)}, files, f"lfim-{sweep_dir.name}"
    )
    md += [f"- {note}"] if note else []
    (sweep_dir / "lfim.md").write_text("\n".join(md).rstrip() + "\n")
    print("\n".join(md))
    for w in warnings:
        print(f"fidesr-report: WARNING: {w}", file=sys.stderr)
    return 1 if strict and warnings else 0
