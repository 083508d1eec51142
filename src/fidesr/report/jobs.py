"""Job folders of a sweep: what ``fidesr-train -m`` / ``fidesr-eval -m`` leave and what the report reads.

A training job folder holds the validation table of the metrics callback (``metrics.csv``: one row per
(step, set)), the per-image values and SR images of each validation (``val/step_<N>/<set>/per_image.csv``
and ``<name>.png``), the validation inputs (``val/gt/<set>``, ``val/lq/<set>``), the CSVLogger's
``csv/metrics.csv`` (training losses), ``.hydra/{config,overrides}.yaml`` and ``run_info.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fidesr.metrics.images import safe_stem
from fidesr.metrics.tables import read_csv
from fidesr.protocol import PROTOCOL, get_spec
from fidesr.runinfo import ERROR_FILE, config_hash, read_run_info

#: Columns of the validation tables that are not metrics.
FIXED = ("step", "epoch", "set", "images", "label", "source", "name")
#: Validation tables of a job, in order of preference (see fidesr.callbacks.metrics: ``tables_name``).
VAL_TABLES = ("metrics.csv", "val_metrics.csv", "csv/val_metrics.csv")
#: Perceptual axes of the perception-distortion plot, in order of preference (the brief: LPIPS, MUSIQ).
PERCEPTUAL = ("lpips", "musiq", "dists", "maniqa", "clipiqa", "niqe")
FIDELITY = ("psnr", "ssim")


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


def one_line(text: str | None, limit: int = 240) -> str:
    """An error message on one line, shortened (the full traceback stays in the job's error.txt)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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

    # ---- per-image results of the last validation ---------------------------------------------------

    def val_dir(self, set_name: str) -> Path:
        """``val/step_<last>/<set>``: per_image.csv and the SR images of the last validation."""
        return self.dir / "val" / f"step_{self.step}" / set_name

    def per_image(self, set_name: str) -> dict[str, dict[str, float]]:
        """Image name -> metric -> value at the last validation; empty without a per-image table."""
        path = self.val_dir(set_name) / "per_image.csv"
        if self.step is None or not path.is_file():
            return {}
        out: dict[str, dict[str, float]] = {}
        for r in read_csv(path):
            out[str(r["name"])] = {k: float(v) for k, v in r.items() if k != "name" and _is_number(v)}
        return out

    def image_dir(self, set_name: str, kind: str = "sr") -> Path:
        """Folder of ``sr`` (last validation), ``gt`` or ``lq`` (native LQ size) images of ``set_name``."""
        return self.val_dir(set_name) if kind == "sr" else self.dir / "val" / kind / set_name

    def image(self, set_name: str, name: str, kind: str = "sr") -> Path:
        """The PNG of image ``name`` in ``image_dir(set_name, kind)``."""
        return self.image_dir(set_name, kind) / f"{safe_stem(name)}.png"

    def train_log(self) -> list[dict[str, Any]]:
        """Rows of the CSVLogger's ``csv/metrics.csv`` (training losses), or [] without one."""
        paths = [self.dir / "csv" / "metrics.csv", *sorted(self.dir.glob("csv/version_*/metrics.csv"))]
        path = next((p for p in paths if p.is_file()), None)
        return read_csv(path) if path is not None else []

    def val_history(self, set_name: str) -> list[dict[str, Any]]:
        """Rows of the validation table for ``set_name`` (every validation, one row per step)."""
        table = next((self.dir / n for n in VAL_TABLES if (self.dir / n).is_file()), None)
        return [r for r in (read_csv(table) if table else []) if r.get("set") == set_name]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


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
            if k in FIXED or v is None:
                continue
            if _is_number(v):
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
