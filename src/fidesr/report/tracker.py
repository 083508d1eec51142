"""W&B upload of a report: a ``report`` run in the sweep's group with the tables, the plots and the visual
comparison as a table of images (offline without credentials; ``wandb sync`` later)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fidesr.loggers import wandb_online_possible
from fidesr.report.comparisons import Comparison
from fidesr.report.jobs import Job

#: key -> (columns, rows); a cell that is a [3,H,W] tensor in [0,1] is uploaded as an image
Tables = Mapping[str, tuple[list[str], list[list[Any]]]]


def jobs_used_wandb(jobs: Sequence[Job]) -> bool:
    return any(j.select("logger.wandb._target_") for j in jobs)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """Rows as a W&B table (list cells joined with ``;``)."""
    return list(columns), [
        [r.get(c) if not isinstance(r.get(c), list) else ";".join(r[c]) for c in columns] for r in rows
    ]


def comparison_table(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[Any]]]:
    """One row per image: its crop box, then one image per column of comparisons.png (zoomed x4, nearest)."""
    labels = list(comparisons[0].crops) if comparisons else []
    rows = [
        [
            c.box.name,
            f"x={c.box.x} y={c.box.y} size={c.box.size}",
            *(torch.repeat_interleave(torch.repeat_interleave(c.crops[k], 4, -1), 4, -2) for k in labels),
        ]
        for c in comparisons
    ]
    return ["image", "box", *labels], rows


def upload_wandb(
    sweep_dir: Path, jobs: Sequence[Job], tables: Tables, images: Sequence[Path], name: str
) -> str | None:
    """A ``report`` run in the sweep's W&B group with the tables and plots; returns its directory."""
    import wandb  # optional at run time: only a W&B upload needs it

    job = next((j for j in jobs if j.select("logger.wandb._target_")), jobs[0] if jobs else None)
    project = (job.select("logger.wandb.project") if job else None) or "fidesr"
    group = next((str(j.info["sweep_id"]) for j in jobs if j.info and j.info.get("sweep_id")), sweep_dir.name)
    mode = "online" if wandb_online_possible() else "offline"
    run = wandb.init(
        project=project,
        entity=job.select("logger.wandb.entity") if job else None,
        group=group,
        job_type="report",
        name=name,
        dir=str(sweep_dir),
        mode=mode,
        reinit="finish_previous",
    )

    def cell(v: Any) -> Any:
        return wandb.Image(v.permute(1, 2, 0).numpy()) if isinstance(v, torch.Tensor) else v

    try:
        if run is None or getattr(run, "disabled", False):
            return None
        for key, (columns, data) in tables.items():
            run.log({key: wandb.Table(columns=columns, data=[[cell(v) for v in r] for r in data])})
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in images})
        return str(getattr(run, "dir", "") or "")
    finally:
        wandb.finish()


def maybe_upload(
    mode: str, sweep_dir: Path, jobs: Sequence[Job], tables: Tables, images: Sequence[Path], name: str
) -> str | None:
    """Upload when ``mode`` is ``on``, or ``auto`` and the jobs logged to W&B; returns a note for the report
    (None when nothing was attempted). A tracker failure never fails the report."""
    if mode == "off" or (mode == "auto" and not jobs_used_wandb(jobs)):
        return None
    try:
        where = upload_wandb(sweep_dir, jobs, tables, images, name)
    except Exception as err:  # a report must not fail because of the tracker
        return f"W&B upload failed: {type(err).__name__}: {err}"
    return f"W&B: table and plots logged (run files in {where}; `wandb sync` if offline)" if where else None
