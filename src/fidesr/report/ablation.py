"""The report of a training sweep: ``ablation.md`` / ``ablation.csv`` and the figures, into the sweep folder.

Values are each job's last validation, mean ± std over seeds. Every configuration is compared with a
baseline (default: every swept component off) image by image: Δ, its 95% bootstrap interval and a
Wilcoxon signed-rank p-value (``fidesr.report.stats``); "best" only where the interval excludes zero.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fidesr.metrics.tables import write_csv
from fidesr.report import comparisons as cmp
from fidesr.report import tracker
from fidesr.report.aggregate import (
    Configuration,
    add_paired,
    choose_baseline,
    group_configurations,
    summarize,
)
from fidesr.report.jobs import PERCEPTUAL, discover_jobs, metric_order
from fidesr.report.plots import plot_deltas, plot_perception_distortion, plot_training_curves, plot_val_curves
from fidesr.report.provenance import provenance_notes, provenance_warnings
from fidesr.report.stats import N_RESAMPLES
from fidesr.report.tables import delta_table, failure_lines, markdown_rows, paper_rows, paper_table

STATS = ("delta", "ci_low", "ci_high", "p")


@dataclass
class AblationOptions:
    """What ``fidesr-report`` passes (see its ``--help``)."""

    paper_rows: bool = False
    wandb: str = "auto"
    strict: bool = False
    baseline: str | None = None
    boxes: Sequence[cmp.Box] = ()
    n_comparisons: int = 3
    crop_size: int = 32
    n_resamples: int = N_RESAMPLES


def _method(baseline: str, n_resamples: int) -> str:
    return (
        f"- differences: each configuration minus the baseline `{baseline}`, image by image on the same "
        "validation images (and seed by seed); Δ [95% interval]: percentile bootstrap of the mean "
        f"difference ({n_resamples:,} resamples of the seeds, then of the images within them; generator "
        "seed 0); p: two-sided Wilcoxon signed-rank test on the per-image differences averaged over "
        'seeds; **bold**: the interval excludes zero. "best" is claimed only for a configuration whose '
        "interval excludes zero on the better side (choose the baseline with `--baseline`)"
    )


def ablation_report(sweep_dir: Path, opts: AblationOptions) -> int:
    """Write the report of a training sweep into ``sweep_dir``; returns the exit code (see module doc)."""
    jobs = discover_jobs(sweep_dir)
    if not jobs:
        print(
            f"fidesr-report: no job folders in {sweep_dir} (expected <num>_<overrides>/ with .hydra/ or "
            "metrics.csv)",
            file=sys.stderr,
        )
        return 1
    done = [j for j in jobs if j.status == "completed"]
    confs = group_configurations(done)
    try:
        baseline = choose_baseline(confs, opts.baseline) if confs else None
    except ValueError as err:
        print(f"fidesr-report: {err}", file=sys.stderr)
        return 2
    sets = list(dict.fromkeys(s for j in done for s in j.final))
    warnings = provenance_warnings(done, confs)
    steps = {j.step for j in done}
    if len(steps) > 1:
        warnings.append(f"jobs ended at different steps: {sorted(s for s in steps if s is not None)}")
    for w in warnings:
        print(f"fidesr-report: WARNING: {w}", file=sys.stderr)

    md = [
        f"# Ablation: `{sweep_dir.name}`",
        "",
        f"- jobs: {len(jobs)} ({len(done)} completed), configurations: {len(confs)}, "
        f"seeds per configuration: {', '.join(sorted({str(len(c.jobs)) for c in confs})) or '-'}",
        "- values: last validation of each job, mean ± std over seeds (↑ higher / ↓ lower is better)",
    ]
    if baseline is not None:
        md.append(_method(baseline.label, opts.n_resamples))
    md.append("")
    if warnings:
        md += ["## Warnings", "", *(f"- ⚠ {w}" for w in warnings), ""]
    skipped = {m: why for j in done for m, why in j.skipped.items()}
    notes = [*provenance_notes(done), *(f"{m} not measured: {why}" for m, why in skipped.items())]
    md += [*(f"- note: {n}" for n in notes), ""] if notes else []
    all_rows: list[dict[str, Any]] = []
    files: list[Path] = []
    wandb_tables: dict[str, Any] = {}
    keys = list(confs[0].keys) if confs else []
    for set_name in sets:
        rows, metrics = summarize(confs, set_name)
        suffix = "" if len(sets) == 1 else f"_{set_name}"
        md += [
            f"## Validation set `{set_name}`",
            "",
            markdown_rows(
                rows, ["configuration", "n_seeds", "n_images", "step", "git_commit", "config_hash"], metrics
            ),
            "",
        ]
        verdicts = add_paired(rows, confs, baseline, set_name, metrics, opts.n_resamples) if baseline else {}
        if verdicts:
            shown = [m for m in metrics if m in verdicts]
            md += [
                f"### Differences from the baseline `{baseline.label}`",
                "",
                delta_table(rows, shown, baseline.label),
                "",
                *(f"- {m.upper()}: {verdicts[m]}" for m in shown),
                "",
            ]
            deltas = plot_deltas(rows, shown, baseline.label, sweep_dir / f"deltas{suffix}.png")
            files += [deltas] if deltas else []
        else:
            md += [
                "No paired differences: the jobs have no per-image tables of their last validation "
                f'(`val/step_<N>/{set_name}/per_image.csv`), so no "best" is claimed.',
                "",
            ]
        pd = plot_perception_distortion(rows, sweep_dir / f"perception_distortion{suffix}.png")
        if pd is None:
            md += [
                "No perception-distortion plot: these runs measured no perceptual metric beside PSNR "
                f"({', '.join(PERCEPTUAL)}); add one, e.g. `metrics=[psnr,ssim,lpips,musiq]`.",
                "",
            ]
        val_curves, flat = plot_val_curves(confs, set_name, sweep_dir / f"val_curves{suffix}.png")
        files += [p for p in (pd, val_curves) if p is not None]
        md += [f"Not plotted over steps (constant): {', '.join(flat)}.", ""] if flat else []
        md += _comparisons(confs, set_name, sweep_dir / f"comparisons{suffix}.png", opts, files, wandb_tables)
        all_rows += rows
    if opts.paper_rows:
        paper = paper_rows(confs)
        paper_metrics = metric_order(m for r in paper for m in r if f"{m}_delta" in r)
        md += [
            "## The paper's ablation (DIV2K-Val, full scale)",
            "",
            "FiDeSR's own rows as published (SD 2.1-base, 200k steps), in brackets the difference from the "
            "paper's base: compare the direction of each effect with ours, not the values.",
            "",
            paper_table(paper, paper_metrics),
            "",
        ]
        write_csv(
            sweep_dir / "ablation_paper.csv",
            paper,
            ["configuration", "ours", "source", *(c for m in paper_metrics for c in (m, f"{m}_delta"))],
        )
    curves, flat = plot_training_curves(confs, sweep_dir / "curves.png")
    if curves is not None:
        files.insert(0, curves)
        md += [f"Training curves not drawn (constant or empty): {', '.join(flat)}.", ""] if flat else []
    else:
        md += [
            "No training curves: the jobs' `csv/metrics.csv` has no varying `train/loss/*` columns "
            "(logger=csv, trainer.log_every_n_steps below the step count).",
            "",
        ]
    if files:
        md += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in files), ""]
    md += failure_lines(jobs)

    metrics_all = metric_order(m for r in all_rows for m in r if f"{m}_std" in r)
    csv_cols = [
        "set",
        "configuration",
        *keys,
        "source",
        "n_seeds",
        "seeds",
        "n_images",
        "step",
        *[f"{m}{s}" for m in metrics_all for s in ("", "_std", *(f"_{k}" for k in STATS))],
        "best",
        "baseline",
        "git_commit",
        "config_hash",
    ]
    csv_rows = [
        {**r, "best": ";".join(r.get("best", [])), "baseline": baseline.label if baseline else None}
        for r in all_rows
    ]
    write_csv(sweep_dir / "ablation.csv", csv_rows, csv_cols)
    wandb_tables["ablation"] = tracker.table(csv_rows, csv_cols)
    note = tracker.maybe_upload(opts.wandb, sweep_dir, jobs, wandb_tables, files, f"report-{sweep_dir.name}")
    md += [f"- {note}"] if note else []
    (sweep_dir / "ablation.md").write_text("\n".join(md).rstrip() + "\n")
    print("\n".join(md))
    print(
        f"fidesr-report: wrote {sweep_dir / 'ablation.md'}, {sweep_dir / 'ablation.csv'} and "
        f"{len(files)} plot(s)",
        file=sys.stderr,
    )
    if not done:
        return 1
    return 1 if opts.strict and (warnings or len(done) < len(jobs)) else 0


def _comparisons(
    confs: Sequence[Configuration],
    set_name: str,
    path: Path,
    opts: AblationOptions,
    files: list[Path],
    wandb_tables: dict[str, Any],
) -> list[str]:
    """comparisons.png for one set (appended to ``files``), its W&B table, and the Markdown lines."""
    found, how = cmp.collect(confs, set_name, opts.n_comparisons, opts.crop_size, opts.boxes)
    if not found:
        return [f"No visual comparison: {how}.", ""]
    seeds = sorted({str(min(c.jobs, key=lambda j: str(j.seed)).seed) for c in confs})
    files.append(cmp.plot_comparisons(found, path, f"seed {', '.join(seeds)}"))
    wandb_tables[f"comparisons/{set_name}"] = tracker.comparison_table(found)
    return [f"Visual comparison ([{path.name}]({path.name})): crops chosen as {how}.", ""]
