"""Markdown of the report: value tables (mean ± std), paired-difference tables (Δ [95% CI]), the paper's
rows as their own table, failed jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fidesr.metrics.published import ABLATION_DAW_LRRB
from fidesr.metrics.tables import header
from fidesr.report.aggregate import Configuration, varying_keys
from fidesr.report.jobs import Job, one_line
from fidesr.report.provenance import job_switches
from fidesr.runinfo import ERROR_FILE


def grid(titles: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    return "\n".join([*lines, *("| " + " | ".join(cells) + " |" for cells in body)])


def value_cell(row: Mapping[str, Any], m: str, *, published: bool = False, bold_best: bool = False) -> str:
    """``mean ± std`` (4 decimals; published values as printed), bold when ``bold_best`` and best."""
    v = row.get(m)
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    text = f"{v:g}" if published else f"{v:.4f}"
    std = row.get(f"{m}_std")
    if isinstance(std, float):
        text += f" ± {std:.4f}"
    return f"**{text}**" if bold_best and m in row.get("best", ()) else text


def markdown_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    metrics: Sequence[str],
    *,
    bold_best: bool = False,
) -> str:
    """A table with ``columns`` then one ``mean ± std`` cell per metric (published rows printed as given)."""
    body = []
    for r in rows:
        pub = r.get("source", "this sweep") not in ("this sweep", "this evaluation")
        cells = [str(r.get(c)) if r.get(c) is not None else "-" for c in columns]
        body.append(cells + [value_cell(r, m, published=pub, bold_best=bold_best) for m in metrics])
    return grid([*columns, *(header(m) for m in metrics)], body)


def delta_cell(row: Mapping[str, Any], m: str) -> str:
    """``+0.1300 [+0.0500, +0.2100]`` (Δ and its 95% interval), bold when the interval excludes zero."""
    d, lo, hi = (row.get(f"{m}_{k}") for k in ("delta", "ci_low", "ci_high"))
    if not all(isinstance(x, float) for x in (d, lo, hi)):
        return "-"
    if d == lo == hi == 0:
        return "0 (identical per-image values)"
    text = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    return f"**{text}**" if lo > 0 or hi < 0 else text


def delta_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], baseline: str) -> str:
    """One row per configuration other than ``baseline``: Δ [95% CI] and the p-value per metric."""
    body = [
        [
            f"`{r['configuration']}`",
            *(
                f"{delta_cell(r, m)} (p = {r[f'{m}_p']:.2g})" if isinstance(r.get(f"{m}_p"), float) else "-"
                for m in metrics
            ),
        ]
        for r in rows
        if r["configuration"] != baseline
    ]
    return grid(["configuration", *(f"Δ {header(m)}" for m in metrics)], body)


def paper_rows(confs: Sequence[Configuration]) -> list[dict[str, Any]]:
    """The paper's DIV2K-Val ablation rows, base first, each with its Δ from the paper's base and the label
    of our configuration with the same DAW / LRRB switches (if any)."""
    ours = {job_switches(c.jobs[0]): c.label for c in confs}
    base = ABLATION_DAW_LRRB[(False, False)].values
    out = []
    for key, p in ABLATION_DAW_LRRB.items():
        row: dict[str, Any] = {
            "set": "div2k_val",
            "configuration": f"paper: {p.label.split(': ', 1)[-1]}",
            "ours": ours.get(key),
            "source": p.source,
            **p.values,
        }
        row.update({f"{m}_delta": v - base[m] for m, v in p.values.items() if m in base})
        out.append(row)
    return out


def paper_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """The paper's rows: value (Δ from the paper's base) per metric, printed as published."""
    body = []
    for r in rows:
        cells = [r["configuration"], f"`{r['ours']}`" if r.get("ours") else "-"]
        for m in metrics:
            v, d = r.get(m), r.get(f"{m}_delta")
            cells.append("-" if v is None else f"{v:g}" + (f" ({d:+.4g})" if d else ""))
        body.append(cells)
    return grid(["paper row", "our configuration", *(header(m) for m in metrics)], body)


def failure_lines(jobs: Sequence[Job]) -> list[str]:
    """A Markdown section listing failed or unfinished jobs with their error and traceback link."""
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
