"""``fidesr-report``: result tables and plots of a Hydra sweep (training ablation or LFIM strengths).

    fidesr-report SWEEP_DIR [--paper-rows] [--wandb auto|on|off] [--strict]
    fidesr-report --lfim SWEEP_DIR                 # an fidesr-eval sweep over lfim.lf_scale / lfim.hf_scale

Training sweeps (``fidesr-train -m ...``): every job folder holds the validation table of the metrics
callback (``metrics.csv``: one row per (step, set)), the CSVLogger's ``csv/metrics.csv`` (training
losses), ``.hydra/{config,overrides}.yaml`` and ``run_info.json`` (status, commit, config hash). The
report takes each job's last validation, groups jobs into configurations by the overrides that vary
between them (``seed`` excepted: seeds are averaged, mean +- std), and writes into SWEEP_DIR:

- ``ablation.md`` / ``ablation.csv``: one row per (validation set, configuration), the best value of each
  metric in bold (direction from ``fidesr.metrics`` specs), the git commit and config hash of the row;
  ``--paper-rows`` puts the paper's DIV2K ablation rows (``fidesr.metrics.published``) beside ours;
- ``curves.png`` (training losses per configuration), ``val_curves.png`` (validation metrics over steps),
  ``perception_distortion.png`` (PSNR vs LPIPS / MUSIQ / ... where measured), ``bars.png`` (per metric);
- failed or unfinished jobs are listed (with the first line of their error) and left out of the rows;
- a warning (in the Markdown and on stderr) whenever jobs differ in code version (commit or source hash),
  seeds of one configuration differ in config hash, or configurations differ in more than the swept keys.

With ``--lfim`` the jobs are ``fidesr-eval`` runs (``summary.csv``), the rows are (lf_scale, hf_scale) and
the plots show fidelity (PSNR/SSIM) against perceptual quality (MUSIQ/MANIQA/CLIP-IQA/...) as the
strengths rise: ``lfim.md``/``lfim.csv``, ``lfim_tradeoff.png``, ``lfim_strength.png``.

A W&B table (and the plots) are uploaded when the jobs logged to W&B (or ``--wandb on``); offline without
credentials (``wandb sync`` later).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fidesr.metrics.published import ABLATION_DAW_LRRB
from fidesr.metrics.specs import PROTOCOL, get_spec
from fidesr.metrics.tables import header, read_csv, write_csv
from fidesr.runinfo import ERROR_FILE, HASH_EXCLUDE, comparable_config, config_hash, read_run_info

log = logging.getLogger("fidesr.report")

_FIXED = ("step", "epoch", "set", "images", "label", "source", "name")
#: Validation tables of a job, in order of preference (see fidesr.callbacks.metrics: ``tables_name``).
VAL_TABLES = ("metrics.csv", "val_metrics.csv", "csv/val_metrics.csv")
#: Perceptual axes of the perception-distortion plot, in order of preference (the brief: LPIPS, MUSIQ).
PERCEPTUAL = ("lpips", "musiq", "dists", "maniqa", "clipiqa", "niqe")
FIDELITY = ("psnr", "ssim")


# ---------------------------------------------------------------------------------------------- jobs


def parse_override(override: str) -> tuple[str, str]:
    """``"+model.lr=1e-4"`` -> ``("model.lr", "1e-4")``; ``"daw@x=on"`` -> ``("daw", "on")``."""
    key, _, value = override.lstrip("+~").partition("=")
    return key.split("@", 1)[0], value


def is_real_metric(name: str) -> bool:
    """A protocol metric computed with its real network (stand-ins are for plumbing, never results)."""
    try:
        get_spec(name)
    except KeyError:
        return False
    return not name.endswith("-standin")


def lower_better(metric: str) -> bool | None:
    """Direction of a metric, or None when unknown (not marked)."""
    try:
        return get_spec(metric).lower_better
    except KeyError:
        return None


def metric_order(names: Iterable[str]) -> list[str]:
    """Protocol order first (psnr, ssim, lpips, ...), then anything else in order of appearance."""
    names = list(dict.fromkeys(names))
    base = [n.removesuffix("-standin") for n in names]
    known = sorted(
        (i for i, b in enumerate(base) if b in PROTOCOL), key=lambda i: list(PROTOCOL).index(base[i])
    )
    return [names[i] for i in known] + [n for i, n in enumerate(names) if i not in known]


@dataclass
class Job:
    """One job folder of a sweep and what the report needs from it."""

    dir: Path
    overrides: list[str] = field(default_factory=list)
    config: DictConfig | None = None
    info: dict[str, Any] | None = None
    status: str = "unknown"
    error: str | None = None
    step: int | None = None
    #: set -> metric -> value at the last validation (training) / our summary row (evaluation)
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    #: metric -> reason, for metrics tabulated as text (``n/a (weights missing)``)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def num(self) -> int:
        head = self.name.split("_", 1)[0]
        return int(head) if head.isdigit() else 1 << 30

    @property
    def override_map(self) -> dict[str, str]:
        return dict(parse_override(o) for o in self.overrides)

    def select(self, key: str, default: Any = None) -> Any:
        """A config value (resolved when possible; raw interpolation string otherwise)."""
        if self.config is None:
            return default
        try:
            value = OmegaConf.select(self.config, key, default=default, throw_on_resolution_failure=True)
        except Exception:  # ${hydra:...} / ${now:...} outside the app
            value = OmegaConf.select(self.config, key, default=default, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value

    @property
    def seed(self) -> Any:
        if "seed" in self.override_map:
            return self.override_map["seed"]
        value = self.select("seed")
        return value if value is not None else (self.info or {}).get("seed")

    @property
    def commit(self) -> str:
        return str((self.info or {}).get("git_commit") or "unknown")

    @property
    def config_hash(self) -> str:
        if self.info and self.info.get("config_hash"):
            return str(self.info["config_hash"])
        return config_hash(self.config) if self.config is not None else "unknown"


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except Exception:  # unreadable / partial file: treated as absent
        return None


def _read_final_table(job: Job, table: Path, *, evaluation: bool) -> None:
    rows = read_csv(table)
    if not rows:
        return
    if evaluation:  # fidesr-eval summary.csv: our row first, then published rows
        ours = next((r for r in rows if r.get("source") in (None, "this evaluation")), rows[0])
        rows, job.step = [{**ours, "set": "eval"}], None
    else:
        job.step = max(int(r["step"]) for r in rows if r.get("step") is not None)
        rows = [r for r in rows if r.get("step") == job.step]
    for r in rows:
        values = job.final.setdefault(str(r.get("set") or "val"), {})
        for k, v in r.items():
            if k in _FIXED or v is None:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                values[k] = float(v)
            else:
                job.skipped[k] = str(v)


def load_job(job_dir: Path, *, evaluation: bool = False) -> Job:
    """Read one job folder (missing files leave the corresponding fields empty)."""
    job = Job(job_dir)
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    job.overrides = [str(o) for o in overrides] if overrides is not None else []
    cfg = _read_yaml(job_dir / ".hydra" / "config.yaml")
    job.config = cfg if isinstance(cfg, DictConfig) else None
    job.info = read_run_info(job_dir)
    names = ("summary.csv",) if evaluation else VAL_TABLES
    table = next((job_dir / n for n in names if (job_dir / n).is_file()), None)
    if table is not None:
        _read_final_table(job, table, evaluation=evaluation)
    if job.info:
        job.status, job.error = str(job.info.get("status", "unknown")), job.info.get("error")
    else:  # runs from before run_info.json: a table means it got to validate
        job.status = "completed" if job.final else "unknown"
    if job.status == "completed" and not job.final:
        job.status, job.error = "no metrics", f"no {' / '.join(names)} in the job folder"
    if job.status == "failed" and not job.error and (job_dir / ERROR_FILE).is_file():
        job.error = (job_dir / ERROR_FILE).read_text().strip().splitlines()[-1]
    return job


def discover_jobs(sweep_dir: Path, *, evaluation: bool = False) -> list[Job]:
    """Job folders of a sweep: sub-folders with a Hydra record, a run_info.json or a result table."""
    markers = (".hydra", "run_info.json", "summary.csv" if evaluation else "metrics.csv")
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)]
    jobs = [load_job(d, evaluation=evaluation) for d in dirs]
    return sorted(jobs, key=lambda j: (j.num, j.name))


# ------------------------------------------------------------------------------------ configurations


@dataclass
class Configuration:
    """Jobs sharing every varying override except the seed."""

    label: str
    keys: dict[str, str]
    jobs: list[Job]

    @property
    def seeds(self) -> list[Any]:
        return [j.seed for j in self.jobs]


def varying_keys(jobs: Sequence[Job], ignore: Iterable[str] = HASH_EXCLUDE) -> list[str]:
    """Override keys whose value is not the same in every job (in order of first appearance).

    ``ignore``: keys (and their sub-keys) that never define a configuration: the seed (averaged over),
    paths (a loop of single runs gives each its own ``paths.output_dir``), Hydra's own settings.
    """
    ignore = tuple(ignore)

    def ignored(key: str) -> bool:
        return any(key == i or key.startswith(i + ".") for i in ignore)

    keys = list(dict.fromkeys(k for j in jobs for k in j.override_map if not ignored(k)))
    return [k for k in keys if len({j.override_map.get(k) for j in jobs}) > 1]


def group_configurations(jobs: Sequence[Job]) -> list[Configuration]:
    """Group completed jobs into configurations (labels like ``daw=short,lrrb=on``), in job order."""
    keys = varying_keys(jobs)
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for j in jobs:
        groups.setdefault(tuple((k, j.override_map.get(k, "-")) for k in keys), []).append(j)
    return [
        Configuration(",".join(f"{k}={v}" for k, v in g) or "all", dict(g), js) for g, js in groups.items()
    ]


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(confs: Sequence[Configuration], set_name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per configuration for ``set_name``: mean and std over seeds, provenance, best marks."""
    metrics = metric_order(m for c in confs for j in c.jobs for m in j.final.get(set_name, {}))
    rows = []
    for c in confs:
        jobs = [j for j in c.jobs if set_name in j.final]
        if not jobs:
            continue
        row: dict[str, Any] = {"set": set_name, "configuration": c.label, **c.keys, "n_seeds": len(jobs),
                               "seeds": " ".join(str(j.seed) for j in jobs),
                               "step": " ".join(sorted({str(j.step) for j in jobs})),
                               "git_commit": " ".join(sorted({j.commit[:12] for j in jobs})),
                               "config_hash": " ".join(sorted({j.config_hash[:12] for j in jobs})),
                               "source": "this sweep"}  # fmt: skip
        for m in metrics:
            values = [j.final[set_name][m] for j in jobs if m in j.final[set_name]]
            if values:
                row[m], row[f"{m}_std"] = _mean_std(values)
            else:
                row[m] = next((j.skipped[m] for j in jobs if m in j.skipped), None)
        rows.append(row)
    mark_best(rows, metrics)
    return rows, metrics


def mark_best(rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """``row["best"]``: the metrics for which the row is best (ties included), per direction."""
    for r in rows:
        r["best"] = []
    for m in metrics:
        lower = lower_better(m)
        values = [r[m] for r in rows if isinstance(r.get(m), float)]
        if lower is None or len(values) < 2:
            continue
        target = min(values) if lower else max(values)
        for r in rows:
            if isinstance(r.get(m), float) and math.isclose(r[m], target, rel_tol=0, abs_tol=1e-12):
                r["best"].append(m)


# ---------------------------------------------------------------------------------------- provenance


def _job_switches(job: Job) -> tuple[bool, bool] | None:
    """(DAW on, LRRB on) from the job's config, or None when it has no such keys."""
    if job.config is None or "daw" not in job.config or "lrrb" not in job.config:
        return None
    return job.config.get("daw") is not None, job.config.get("lrrb") is not None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def _changed_files(jobs: Sequence[Job]) -> str:
    """``"; differing files: a.py (jobs 0-1 vs 2-3), ..."`` from the records' per-file hashes."""
    records = [
        (j, j.info.get("source_files"))
        for j in jobs
        if j.info and isinstance(j.info.get("source_files"), dict)
    ]
    if len(records) < 2:
        return ""
    names = sorted({f for _, files in records for f in files})
    changed = [f for f in names if len({files.get(f) for _, files in records}) > 1]
    if not changed:
        return ""
    parts = []
    for f in changed[:8]:
        first = records[0][1].get(f)
        other = [j.num if j.num < 1 << 30 else j.name for j, files in records if files.get(f) != first]
        parts.append(f"{f} (changed for job(s) {', '.join(map(str, other))})")
    return "; differing files: " + ", ".join(parts) + (" ..." if len(changed) > 8 else "")


def provenance_warnings(jobs: Sequence[Job], confs: Sequence[Configuration]) -> list[str]:
    """Everything that would make rows not comparable (see module doc)."""
    warnings: list[str] = []
    missing = [j.name for j in jobs if j.info is None]
    if missing:
        warnings.append(f"{len(missing)} job(s) have no run_info.json (git commit and code version unknown): "
                        + ", ".join(missing[:5]))  # fmt: skip
    for field_name, what in (("git_commit", "git commits"), ("code_hash", "source code (uncommitted edits)"),
                             ("package_version", "package versions")):  # fmt: skip
        values = {str(j.info.get(field_name)) for j in jobs if j.info and j.info.get(field_name)}
        if len(values) > 1:
            detail = _changed_files(jobs) if field_name == "code_hash" else ""
            warnings.append(
                f"jobs ran different {what}: " + ", ".join(sorted(v[:12] for v in values)) + detail
            )
    for c in confs:
        hashes = {j.config_hash for j in c.jobs}
        if len(hashes) > 1:
            warnings.append(f"seeds of {c.label} ran different configs (config hashes "
                            + ", ".join(sorted(h[:12] for h in hashes)) + ")")  # fmt: skip
    # Across configurations, only the swept keys may differ.
    swept = [*HASH_EXCLUDE, *varying_keys(jobs)]
    base = {j.name: comparable_config(j.config, swept) for j in jobs if j.config is not None}
    if len({config_hash(b, ()) for b in base.values()}) > 1:
        flat = [_flatten(b) for b in base.values()]
        keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
        warnings.append("configurations differ in more than the swept keys: " + ", ".join(keys[:10])
                        + (" ..." if len(keys) > 10 else ""))  # fmt: skip
    return warnings


# -------------------------------------------------------------------------------------------- tables


def _fmt(row: Mapping[str, Any], m: str, *, published: bool = False) -> str:
    v = row.get(m)
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    text = f"{v:g}" if published else f"{v:.4f}"
    std = row.get(f"{m}_std")
    if isinstance(std, float):
        text += f" ± {std:.4f}"
    return f"**{text}**" if m in row.get("best", ()) else text


def markdown_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], metrics: Sequence[str]) -> str:
    """A Markdown table with mean ± std cells, best values bold, published rows printed as given."""
    titles = [*columns, *(header(m) for m in metrics)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in rows:
        pub = r.get("source", "this sweep") not in ("this sweep", "this evaluation")
        cells = [str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns]
        cells += [_fmt(r, m, published=pub) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_paper_rows(rows: list[dict[str, Any]], confs: Sequence[Configuration]) -> list[dict[str, Any]]:
    """Each of the paper's DIV2K ablation rows right after the first of our configurations it matches."""
    switches = {c.label: _job_switches(c.jobs[0]) for c in confs}
    placed: set[tuple[bool, bool]] = set()
    out = []
    for r in rows:
        out.append(r)
        key = switches.get(r["configuration"])
        if key in ABLATION_DAW_LRRB and key not in placed:
            placed.add(key)
            p = ABLATION_DAW_LRRB[key]
            out.append({"set": "div2k_val", "configuration": f"paper: {p.label.split(': ', 1)[-1]}",
                        "source": p.source, **p.values})  # fmt: skip
    for key, p in ABLATION_DAW_LRRB.items():
        if key not in placed:
            out.append({"set": "div2k_val", "configuration": f"paper: {p.label.split(': ', 1)[-1]}",
                        "source": p.source, **p.values})  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path, title: str, rect: tuple[float, ...] | None = None) -> Path:
    """Title, lay out, write at 120 dpi and close a figure; returns ``path``."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _train_log(job: Job) -> list[dict[str, Any]]:
    paths = [job.dir / "csv" / "metrics.csv", *sorted(job.dir.glob("csv/version_*/metrics.csv"))]
    path = next((p for p in paths if p.is_file()), None)
    return read_csv(path) if path is not None else []


def _mean_curve(
    curves: Sequence[Mapping[int, float]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    mean = [statistics.fmean(c[s] for c in curves) for s in steps]
    return steps, mean, [min(c[s] for c in curves) for s in steps], [max(c[s] for c in curves) for s in steps]


def _curves_figure(confs: Sequence[Configuration], series: Mapping[str, Mapping[str, list[dict[int, float]]]],
                   keys: Sequence[str], path: Path, title: str, ylabel: Any = None) -> Path | None:  # fmt: skip
    """One panel per key, one line per configuration (mean over seeds, min-max band)."""
    if not keys:
        return None
    plt = _pyplot()
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for c, color in zip(confs, _colors(len(confs)), strict=True):
            curves = [cv for cv in series.get(c.label, {}).get(key, []) if cv]
            steps, mean, lo, hi = _mean_curve(curves)
            if not steps:
                continue
            ax.plot(
                steps, mean, color=color, label=c.label, lw=1.4, marker="o" if len(steps) < 8 else None, ms=3
            )
            if len(curves) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        ax.set_title(ylabel(key) if ylabel else key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False
    )
    return _save_figure(fig, path, title, rect=(0, 0.08 if nrow == 1 else 0.05, 1, 0.95))


def plot_training_curves(confs: Sequence[Configuration], path: Path) -> Path | None:
    """``train/loss/*`` of the CSVLogger per configuration (mean over seeds)."""
    series: dict[str, dict[str, list[dict[int, float]]]] = {}
    keys: list[str] = []
    for c in confs:
        for j in c.jobs:
            rows = _train_log(j)
            cols = [k for k in (rows[0] if rows else {}) if k.startswith("train/loss/")]
            keys += [k for k in cols if k not in keys]
            for k in cols:
                curve = {int(r["step"]): float(r[k]) for r in rows if isinstance(r.get(k), (int, float))}
                series.setdefault(c.label, {}).setdefault(k, []).append(curve)
    keys = sorted(keys, key=lambda k: (k.endswith("/total"), k))[:6]  # the total last
    return _curves_figure(confs, series, keys, path, "Training losses (CSVLogger)",
                          ylabel=lambda k: k.removeprefix("train/"))  # fmt: skip


def plot_val_curves(confs: Sequence[Configuration], set_name: str, path: Path) -> Path | None:
    """Validation metrics over steps per configuration (from the jobs' validation tables)."""
    series: dict[str, dict[str, list[dict[int, float]]]] = {}
    keys: list[str] = []
    for c in confs:
        for j in c.jobs:
            table = next((j.dir / n for n in VAL_TABLES if (j.dir / n).is_file()), None)
            rows = [r for r in (read_csv(table) if table else []) if r.get("set") == set_name]
            cols = [k for k in (rows[0] if rows else {}) if k not in _FIXED and lower_better(k) is not None]
            keys += [k for k in cols if k not in keys]
            for k in cols:
                curve = {int(r["step"]): float(r[k]) for r in rows if isinstance(r.get(k), (int, float))}
                series.setdefault(c.label, {}).setdefault(k, []).append(curve)
    return _curves_figure(confs, series, metric_order(keys), path, f"Validation metrics on {set_name!r}",
                          ylabel=header)  # fmt: skip


def _scatter_panels(ax: Any, points: Sequence[tuple[str, float, float, float | None, float | None]],
                    colors: Sequence[Any]) -> None:  # fmt: skip
    for (label, x, y, xe, ye), color in zip(points, colors, strict=True):
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=color, ms=6, capsize=3, label=label)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)


def plot_perception_distortion(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """PSNR (x) against each measured perceptual metric (y, arrow = better); None without both axes."""
    have = {m for r in rows for m, v in r.items() if isinstance(v, float)}
    ys = [m for m in PERCEPTUAL if m in have and is_real_metric(m)][:3]
    if "psnr" not in have or not ys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 4.0), squeeze=False)
    colors = _colors(len(rows))
    for ax, m in zip(axes.flat, ys, strict=True):
        pts = [(r["configuration"], r["psnr"], r[m], r.get("psnr_std"), r.get(f"{m}_std"))
               for r in rows if isinstance(r.get("psnr"), float) and isinstance(r.get(m), float)]  # fmt: skip
        _scatter_panels(ax, pts, colors[: len(pts)])
        ax.set_xlabel(header("psnr") + "  (distortion: right is better)")
        ax.set_ylabel(header(m) + ("  (lower is better)" if lower_better(m) else "  (higher is better)"))
        ax.grid(alpha=0.3)
    return _save_figure(fig, path, "Perception-distortion")


def plot_bars(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], path: Path) -> Path | None:
    """One panel per metric: a bar per configuration (std as error bar), the best one outlined."""
    metrics = [m for m in metrics if any(isinstance(r.get(m), float) for r in rows)]
    if not metrics or not rows:
        return None
    plt = _pyplot()
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(max(4.0, 1.1 * len(rows) + 1.5) * ncol, 3.6 * nrow), squeeze=False
    )
    colors = _colors(len(rows))
    labels = [str(r["configuration"]).replace(",", "\n") for r in rows]
    for ax, m in zip(axes.flat, metrics, strict=False):
        vals = [r.get(m) if isinstance(r.get(m), float) else math.nan for r in rows]
        errs = [r.get(f"{m}_std") or 0.0 for r in rows]
        bars = ax.bar(range(len(rows)), vals, yerr=errs if any(errs) else None, color=colors, capsize=3)
        for b, r in zip(bars, rows, strict=True):
            if m in r.get("best", ()):
                b.set_edgecolor("black")
                b.set_linewidth(2.0)
        finite = [v for v in vals if math.isfinite(v)]
        lo, hi = min(finite), max(finite)
        pad = (hi - lo) * 0.6 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - pad - max(errs), hi + pad + max(errs))  # differences, not absolute size, matter here
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(header(m), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    return _save_figure(fig, path, "Final validation metrics (outlined: best)")


# ---------------------------------------------------------------------------------------------- W&B


def jobs_used_wandb(jobs: Sequence[Job]) -> bool:
    return any(j.select("logger.wandb._target_") for j in jobs)


def upload_wandb(sweep_dir: Path, jobs: Sequence[Job], tables: Mapping[str, tuple[list[str], list[list[Any]]]],
                 images: Sequence[Path], name: str) -> str | None:  # fmt: skip
    """A ``report`` run in the sweep's W&B group with the tables and plots; returns its directory."""
    import wandb

    from fidesr.loggers import wandb_online_possible

    job = next((j for j in jobs if j.select("logger.wandb._target_")), jobs[0] if jobs else None)
    project = (job.select("logger.wandb.project") if job else None) or "fidesr"
    group = next((str(j.info["sweep_id"]) for j in jobs if j.info and j.info.get("sweep_id")), sweep_dir.name)
    mode = "online" if wandb_online_possible() else "offline"
    run = wandb.init(project=project, entity=job.select("logger.wandb.entity") if job else None, group=group,
                     job_type="report", name=name, dir=str(sweep_dir), mode=mode, reinit="finish_previous")  # fmt: skip
    try:
        if run is None or getattr(run, "disabled", False):
            return None
        for key, (columns, data) in tables.items():
            run.log({key: wandb.Table(columns=columns, data=data)})
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in images})
        return str(getattr(run, "dir", "") or "")
    finally:
        wandb.finish()


def _wandb_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> tuple[list[str], list[list[Any]]]:
    return list(columns), [
        [r.get(c) if not isinstance(r.get(c), list) else ";".join(r[c]) for c in columns] for r in rows
    ]


def _maybe_upload(args: argparse.Namespace, sweep_dir: Path, jobs: Sequence[Job],
                  tables: Mapping[str, tuple[list[str], list[list[Any]]]], images: Sequence[Path], name: str,
                  notes: list[str]) -> None:  # fmt: skip
    if args.wandb == "off" or (args.wandb == "auto" and not jobs_used_wandb(jobs)):
        return
    try:
        where = upload_wandb(sweep_dir, jobs, tables, images, name)
    except Exception as err:  # a report must not fail because of the tracker
        notes.append(f"W&B upload failed: {type(err).__name__}: {err}")
        return
    if where:
        notes.append(f"W&B: table and plots logged (run files in {where}; `wandb sync` if offline)")


# --------------------------------------------------------------------------------------------- reports


def one_line(text: str | None, limit: int = 240) -> str:
    """An error message on one line, shortened (the full traceback stays in the job's error.txt)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def provenance_notes(jobs: Sequence[Job]) -> list[str]:
    """Facts worth a line that do not make rows incomparable."""
    notes = []
    dirty = [j for j in jobs if j.info and j.info.get("git_dirty")]
    if dirty:
        notes.append(f"{len(dirty)} of {len(jobs)} job(s) ran with uncommitted changes in src/ or conf/ "
                     "(the source hash tells whether they ran the same code)")  # fmt: skip
    return notes


def _failure_lines(jobs: Sequence[Job]) -> list[str]:
    bad = [j for j in jobs if j.status != "completed"]
    if not bad:
        return []
    keys = varying_keys(jobs)
    lines = ["## Failed or unfinished jobs", ""]
    for j in bad:
        label = ",".join(f"{k}={j.override_map[k]}" for k in keys if k in j.override_map) or j.name
        detail = f": {one_line(j.error)}" if j.error else ""
        where = f" ([traceback](<{j.name}/{ERROR_FILE}>))" if (j.dir / ERROR_FILE).is_file() else ""
        lines.append(f"- job {j.num if j.num < 1 << 30 else j.name} `{label}` **{j.status}**{detail}{where}")
    return [*lines, ""]


def ablation_report(sweep_dir: Path, args: argparse.Namespace) -> int:
    """Training sweep report (see module doc). Returns the exit code."""
    jobs = discover_jobs(sweep_dir)
    if not jobs:
        print(f"fidesr-report: no job folders in {sweep_dir} (expected <num>_<overrides>/ with .hydra/ or "
              "metrics.csv)", file=sys.stderr)  # fmt: skip
        return 1
    done = [j for j in jobs if j.status == "completed"]
    confs = group_configurations(done)
    sets = list(dict.fromkeys(s for j in done for s in j.final))
    warnings = provenance_warnings(done, confs)
    steps = {j.step for j in done}
    if len(steps) > 1:
        warnings.append(f"jobs ended at different steps: {sorted(s for s in steps if s is not None)}")
    for w in warnings:
        print(f"fidesr-report: WARNING: {w}", file=sys.stderr)

    md = [f"# Ablation: `{sweep_dir.name}`", "",
          f"- jobs: {len(jobs)} ({len(done)} completed), configurations: {len(confs)}, "
          f"seeds per configuration: {', '.join(sorted({str(len(c.jobs)) for c in confs})) or '-'}",
          "- values: last validation of each job; mean ± std over seeds; **bold**: best per column "
          "(↑ higher / ↓ lower is better)", ""]  # fmt: skip
    if warnings:
        md += ["## Warnings", "", *(f"- ⚠ {w}" for w in warnings), ""]
    skipped = {m: why for j in done for m, why in j.skipped.items()}
    notes = [*provenance_notes(done), *(f"{m} not measured: {why}" for m, why in skipped.items())]
    md += [*(f"- note: {n}" for n in notes), ""] if notes else []
    all_rows: list[dict[str, Any]] = []
    files: list[Path] = []
    keys = list(confs[0].keys) if confs else []
    columns = ["configuration", "n_seeds", "step", "git_commit", "config_hash"]
    for set_name in sets:
        rows, metrics = summarize(confs, set_name)
        shown = with_paper_rows(rows, confs) if args.paper_rows else rows
        shown_metrics = metric_order([*metrics, *(m for r in shown for m in r if m in PROTOCOL)])
        md += [f"## Validation set `{set_name}`", "", markdown_rows(shown, columns, shown_metrics), ""]
        if args.paper_rows:
            md += ["Paper rows: FiDeSR's own ablation on DIV2K-Val at full scale (SD 2.1-base, 200k steps) as "
                   "published; compare directions, not values, with a demo-scale run.", ""]  # fmt: skip
        all_rows += shown
        suffix = "" if len(sets) == 1 else f"_{set_name}"
        for p in (plot_bars(rows, metrics, sweep_dir / f"bars{suffix}.png"),
                  plot_perception_distortion(rows, sweep_dir / f"perception_distortion{suffix}.png"),
                  plot_val_curves(confs, set_name, sweep_dir / f"val_curves{suffix}.png")):  # fmt: skip
            if p is not None:
                files.append(p)
        if not any(p.name.startswith("perception_distortion") for p in files):
            md += ["No perception-distortion plot: these runs measured no perceptual metric beside PSNR "
                   f"({', '.join(PERCEPTUAL)}); add one, e.g. `metrics=[psnr,ssim,lpips,musiq]`.", ""]  # fmt: skip
    curves = plot_training_curves(confs, sweep_dir / "curves.png")
    if curves is not None:
        files.insert(0, curves)
    else:
        md += ["No training curves: the jobs' `csv/metrics.csv` has no `train/loss/*` columns "
               "(logger=csv, trainer.log_every_n_steps below the step count).", ""]  # fmt: skip
    if files:
        md += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in files), ""]
    md += _failure_lines(jobs)

    metrics_all = metric_order(m for r in all_rows for m in r if m in PROTOCOL or m.endswith("-standin"))
    csv_cols = ["set", "configuration", *keys, "source", "n_seeds", "seeds", "step",
                *[c for m in metrics_all for c in (m, f"{m}_std")], "best", "git_commit", "config_hash"]  # fmt: skip
    csv_rows = [{**r, "best": ";".join(r.get("best", []))} for r in all_rows]
    write_csv(sweep_dir / "ablation.csv", csv_rows, csv_cols)
    notes = []
    _maybe_upload(args, sweep_dir, jobs, {"ablation": _wandb_table(csv_rows, csv_cols)}, files,
                  f"report-{sweep_dir.name}", notes)  # fmt: skip
    md += [f"- {n}" for n in notes]
    (sweep_dir / "ablation.md").write_text("\n".join(md).rstrip() + "\n")
    print("\n".join(md))
    print(f"fidesr-report: wrote {sweep_dir / 'ablation.md'}, {sweep_dir / 'ablation.csv'} and "
          f"{len(files)} plot(s)", file=sys.stderr)  # fmt: skip
    if not done:
        return 1
    return 1 if args.strict and (warnings or len(done) < len(jobs)) else 0


# ------------------------------------------------------------------------------------------------ LFIM


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
    plt = _pyplot()
    files = []
    hfs = sorted({r["hf_scale"] for r in rows if r["hf_scale"] is not None})
    colors = dict(zip(hfs, _colors(len(hfs)), strict=True))
    fid = [m for m in FIDELITY if m in metrics]
    per = [m for m in PERCEPTUAL if m in metrics and is_real_metric(m)]

    def lines(ax: Any, x: str | None, y: str) -> None:
        for hf in hfs:
            pts = sorted((r["lf_scale"], r.get(x) if x else r["lf_scale"], r.get(y)) for r in rows
                         if r["hf_scale"] == hf and isinstance(r.get(y), float) and (x is None or isinstance(r.get(x), float)))  # fmt: skip
            if not pts:
                continue
            ax.plot(
                [p[1] for p in pts],
                [p[2] for p in pts],
                "-o",
                color=colors[hf],
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
        files.append(_save_figure(fig, out / "lfim_tradeoff.png", "LFIM trade-off: fidelity vs perception as the strengths rise"))
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
    files.append(_save_figure(fig, out / "lfim_strength.png", "Metrics vs LFIM strength"))
    return files


def lfim_report(sweep_dir: Path, args: argparse.Namespace) -> int:
    """LFIM strength sweep report (``fidesr-eval -m ... lfim.lf_scale=... lfim.hf_scale=...``)."""
    jobs = discover_jobs(sweep_dir, evaluation=True)
    done = [j for j in jobs if j.final]
    if not done:
        print(f"fidesr-report --lfim: no fidesr-eval results (summary.csv) in the job folders of {sweep_dir}",
              file=sys.stderr)  # fmt: skip
        return 1
    rows = []
    for j in done:
        values = next(iter(j.final.values()))
        lf, hf = _strength(j, "lf_scale"), _strength(j, "hf_scale")
        rows.append({"configuration": f"lf={lf if lf is not None else 'default'},hf={hf if hf is not None else 'default'}",
                     "lf_scale": lf, "hf_scale": hf, "job": j.name, "git_commit": j.commit[:12],
                     "source": "this evaluation", **values})  # fmt: skip
    rows.sort(
        key=lambda r: (
            r["lf_scale"] if r["lf_scale"] is not None else -1,
            r["hf_scale"] if r["hf_scale"] is not None else -1,
        )
    )
    metrics = metric_order(m for r in rows for m in r if m in PROTOCOL or m.endswith("-standin"))
    mark_best(rows, metrics)
    # fidesr-eval writes no run_info.json; the checkpoint (below) is what ties these jobs together.
    warnings = [w for w in provenance_warnings(done, [])
                if not w.startswith(("configurations differ", f"{len(done)} job(s) have no run_info"))]  # fmt: skip
    ckpts = {str(j.select("checkpoint")) for j in done if j.select("checkpoint") is not None}
    if len(ckpts) > 1:
        warnings.append(f"jobs evaluated different checkpoints: {', '.join(sorted(ckpts))}")
    files = plot_lfim([r for r in rows if r["lf_scale"] is not None], metrics, sweep_dir) if any(
        r["lf_scale"] is not None for r in rows) else []  # fmt: skip
    md = [f"# LFIM strengths: `{sweep_dir.name}`", "",
          f"- checkpoint: {', '.join(sorted(ckpts)) or 'unknown'}; {len(done)} of {len(jobs)} jobs with results",
          "- **bold**: best per column; the trade-off is the point: no row is best everywhere", ""]  # fmt: skip
    if warnings:
        md += ["## Warnings", "", *(f"- ⚠ {w}" for w in warnings), ""]
    md += [markdown_rows(rows, ["lf_scale", "hf_scale"], metrics), ""]
    if files:
        md += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in files), ""]
    md += _failure_lines([j for j in jobs if not j.final and j.status != "completed"] or [])
    cols = ["lf_scale", "hf_scale", *metrics, "best", "job", "git_commit"]
    csv_rows = [{**r, "best": ";".join(r["best"])} for r in rows]
    write_csv(sweep_dir / "lfim.csv", csv_rows, cols)
    notes: list[str] = []
    _maybe_upload(
        args, sweep_dir, jobs, {"lfim": _wandb_table(csv_rows, cols)}, files, f"lfim-{sweep_dir.name}", notes
    )
    md += [f"- {n}" for n in notes]
    (sweep_dir / "lfim.md").write_text("\n".join(md).rstrip() + "\n")
    print("\n".join(md))
    for w in warnings:
        print(f"fidesr-report: WARNING: {w}", file=sys.stderr)
    return 1 if args.strict and warnings else 0


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidesr-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("sweep_dir", type=Path, help="a multirun folder (…/multirun_<time>) holding job folders")
    p.add_argument(
        "--lfim", action="store_true", help="an fidesr-eval sweep over lfim.lf_scale / lfim.hf_scale"
    )
    p.add_argument(
        "--paper-rows", action="store_true", help="add the paper's DIV2K ablation rows (DESIGN sec. 3)"
    )
    p.add_argument(
        "--wandb",
        choices=["auto", "on", "off"],
        default="auto",
        help="upload the table and plots to W&B (auto: when the jobs logged to W&B)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 on provenance warnings or failed jobs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fidesr-report``; returns the exit code (also when called from Python)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sweep_dir: Path = args.sweep_dir.expanduser()
    if not sweep_dir.is_dir():
        print(f"fidesr-report: not a folder: {sweep_dir}", file=sys.stderr)
        return 2
    code = lfim_report(sweep_dir, args) if args.lfim else ablation_report(sweep_dir, args)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
