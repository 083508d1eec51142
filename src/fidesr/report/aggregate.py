"""Jobs into configurations, configurations into rows: mean ± std over seeds, paired differences from a
baseline configuration (``fidesr.report.stats``) and the "best" rule that rests on them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fidesr.report.jobs import Job, lower_better, metric_order
from fidesr.report.stats import N_RESAMPLES, PairedDifference, paired_difference
from fidesr.runinfo import HASH_EXCLUDE

#: Override values that mean "this component is off" (the default baseline has only such values).
OFF_VALUES = ("off", "null", "none", "false", "0")


@dataclass
class Configuration:
    """Jobs sharing every varying override except the seed."""

    label: str
    keys: dict[str, str]
    jobs: list[Job]

    @property
    def seeds(self) -> list[Any]:
        return [j.seed for j in self.jobs]

    def per_image(self, set_name: str, metric: str) -> dict[Any, dict[str, float]]:
        """Seed -> image name -> value of ``metric`` at each job's last validation of ``set_name``."""
        out = {}
        for j in self.jobs:
            values = {n: v[metric] for n, v in j.per_image(set_name).items() if metric in v}
            if values:
                out[j.seed] = values
        return out


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


def choose_baseline(confs: Sequence[Configuration], wanted: str | None = None) -> Configuration:
    """The configuration every other one is compared with.

    ``wanted``: a configuration label (``daw=off,lrrb=off``); default: the one whose swept values are all
    "off" (every component off), else the first. Raises ValueError naming the labels for an unknown one.
    """
    if not confs:
        raise ValueError("no configurations to compare")
    if wanted is not None:
        found = next((c for c in confs if c.label == wanted), None)
        if found is None:
            raise ValueError(
                f"--baseline {wanted!r} is not a configuration of this sweep; "
                f"configurations: {', '.join(c.label for c in confs)}"
            )
        return found
    off = [c for c in confs if c.keys and all(v.lower() in OFF_VALUES for v in c.keys.values())]
    return off[0] if off else confs[0]


def summarize(confs: Sequence[Configuration], set_name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per configuration for ``set_name``: mean and std over seeds, provenance (no best marks)."""
    metrics = metric_order(m for c in confs for j in c.jobs for m in j.final.get(set_name, {}))
    rows = []
    for c in confs:
        jobs = [j for j in c.jobs if set_name in j.final]
        if not jobs:
            continue
        n_images = {len(j.per_image(set_name)) or None for j in jobs} - {None}
        row: dict[str, Any] = {
            "set": set_name,
            "configuration": c.label,
            **c.keys,
            "n_seeds": len(jobs),
            "n_images": min(n_images) if n_images else None,
            "seeds": " ".join(str(j.seed) for j in jobs),
            "step": " ".join(sorted({str(j.step) for j in jobs})),
            "git_commit": " ".join(sorted({j.commit[:12] for j in jobs})),
            "config_hash": " ".join(sorted({j.config_hash[:12] for j in jobs})),
            "source": "this sweep",
            "best": [],
        }
        for m in metrics:
            values = [j.final[set_name][m] for j in jobs if m in j.final[set_name]]
            if values:
                row[m] = statistics.fmean(values)
                row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else None
            else:
                row[m] = next((j.skipped[m] for j in jobs if m in j.skipped), None)
        rows.append(row)
    return rows, metrics


def add_paired(
    rows: list[dict[str, Any]],
    confs: Sequence[Configuration],
    baseline: Configuration,
    set_name: str,
    metrics: Sequence[str],
    n_resamples: int = N_RESAMPLES,
) -> dict[str, str]:
    """Add ``<m>_delta``, ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_p`` (vs ``baseline``) to each row and
    mark ``row["best"]`` by the interval rule; returns metric -> verdict sentence (see ``verdict``)."""
    by_label = {c.label: c for c in confs}
    verdicts = {}
    for m in metrics:
        if lower_better(m) is None:
            continue
        base = baseline.per_image(set_name, m)
        results: dict[str, PairedDifference] = {}
        for r in rows:
            res = paired_difference(by_label[r["configuration"]].per_image(set_name, m), base, n_resamples)
            if res is None:
                continue
            results[r["configuration"]] = res
            r.update(
                {
                    f"{m}_delta": res.delta,
                    f"{m}_ci_low": res.ci_low,
                    f"{m}_ci_high": res.ci_high,
                    f"{m}_p": res.p_value,
                    "n_images": res.n_images,
                    "n_seeds": res.n_seeds,
                }
            )
        if results:
            best, verdicts[m] = verdict(results, baseline.label, bool(lower_better(m)))
            for r in rows:
                if r["configuration"] == best:
                    r["best"].append(m)
    return verdicts


def verdict(results: dict[str, PairedDifference], baseline: str, lower: bool) -> tuple[str | None, str]:
    """The best configuration of one metric, or None, and the sentence that says why.

    Rule: a configuration is *better* than the baseline when its interval excludes zero on the good side;
    the best is the better one with the largest improvement; when every other configuration is worse
    (interval on the bad side), the baseline is best; otherwise no difference was detected.
    """
    sign = -1.0 if lower else 1.0  # improvement = sign * delta
    others = {k: v for k, v in results.items() if k != baseline}
    n = next(iter(results.values()))
    size = f"n = {n.n_images} images" + (f" x {n.n_seeds} seeds" if n.n_seeds > 1 else "")
    better = {k: v for k, v in others.items() if v.detected and sign * v.delta > 0}
    if better:
        best = max(better, key=lambda k: sign * better[k].delta)
        note = (
            ""
            if len(better) == 1
            else f" (also better than the baseline: {', '.join(f'`{k}`' for k in better if k != best)})"
        )
        return best, f"best: `{best}`, {_interval(better[best])} vs the baseline{note}"
    if others and all(v.detected for v in others.values()):
        return baseline, f"best: the baseline `{baseline}` (every other configuration is worse, {size})"
    worse = [k for k, v in others.items() if v.detected]
    same = [k for k, v in others.items() if v.delta == v.ci_low == v.ci_high == 0]
    tail = f"; worse than the baseline: {', '.join(f'`{k}`' for k in worse)}" if worse else ""
    tail += f"; identical to the baseline on every image: {', '.join(f'`{k}`' for k in same)}" if same else ""
    return None, f"no difference detected at {size}{tail}"


def _interval(res: PairedDifference) -> str:
    return f"Δ {res.delta:+.4g} [{res.ci_low:+.4g}, {res.ci_high:+.4g}], p = {res.p_value:.2g}"


def mark_best(rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """``row["best"]``: the metrics for which the row has the best value (ties included), per direction.

    For tables without paired data (the LFIM strengths of one checkpoint, where the trade-off is the point).
    """
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
