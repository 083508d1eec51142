"""Provenance: whether the jobs of a sweep are comparable (same code, same config but the swept keys)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fidesr.report.aggregate import Configuration, varying_keys
from fidesr.report.jobs import Job
from fidesr.runinfo import HASH_EXCLUDE, comparable_config, config_hash


def job_switches(job: Job) -> tuple[bool, bool] | None:
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
        warnings.append(
            f"{len(missing)} job(s) have no run_info.json (git commit and code version unknown): "
            + ", ".join(missing[:5])
        )
    for field_name, what in (
        ("git_commit", "git commits"),
        ("code_hash", "source code (uncommitted edits)"),
        ("package_version", "package versions"),
    ):
        values = {str(j.info.get(field_name)) for j in jobs if j.info and j.info.get(field_name)}
        if len(values) > 1:
            detail = _changed_files(jobs) if field_name == "code_hash" else ""
            warnings.append(
                f"jobs ran different {what}: " + ", ".join(sorted(v[:12] for v in values)) + detail
            )
    for c in confs:
        hashes = {j.config_hash for j in c.jobs}
        if len(hashes) > 1:
            warnings.append(
                f"seeds of {c.label} ran different configs (config hashes "
                + ", ".join(sorted(h[:12] for h in hashes))
                + ")"
            )
    # Across configurations, only the swept keys may differ.
    swept = [*HASH_EXCLUDE, *varying_keys(jobs)]
    base = {j.name: comparable_config(j.config, swept) for j in jobs if j.config is not None}
    if len({config_hash(b, ()) for b in base.values()}) > 1:
        flat = [_flatten(b) for b in base.values()]
        keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
        warnings.append(
            "configurations differ in more than the swept keys: "
            + ", ".join(keys[:10])
            + (" ..." if len(keys) > 10 else "")
        )
    return warnings


def provenance_notes(jobs: Sequence[Job]) -> list[str]:
    """Facts worth a line that do not make rows incomparable."""
    notes = []
    dirty = [j for j in jobs if j.info and j.info.get("git_dirty")]
    if dirty:
        notes.append(
            f"{len(dirty)} of {len(jobs)} job(s) ran with uncommitted changes in src/ or conf/ "
            "(the source hash tells whether they ran the same code)"
        )
    return notes
