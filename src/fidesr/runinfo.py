"""Run provenance and failure isolation for training jobs: ``run_info.json`` in every run directory.

``run_info.json`` records what is needed to tell whether two runs are comparable: the git commit (or
``"unknown"``) and whether the source tree had local changes, a hash of the package source, the package
version, a hash of the resolved config without the run-specific parts (``paths``, ``hydra``, ``seed``,
``ckpt_path``), start/end time, status (``running`` -> ``completed`` | ``failed`` | ``interrupted``), and for a failed run
the error and its traceback. ``fidesr-report`` reads it to refuse mixing code versions silently.

The train app runs its task through :func:`run_job`::

    metrics = run_job(train, cfg) or {}

In a Hydra multirun, a job that raises is recorded as failed (traceback in ``run_info.json`` and
``error.txt``), its W&B run is finished with exit code 1, and the exception is swallowed so that the
remaining jobs run; :class:`SweepSummary` (a Hydra callback) lists the failures at the end of the sweep
and makes the process exit non-zero. A single run re-raises as usual.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import socket
import subprocess
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from fidesr.errors import TrainingInterrupted
from fidesr.files import atomic_write_text
from fidesr.loggers import finish_wandb

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
ERROR_FILE = "error.txt"
#: Top-level (or dotted) keys left out of the config hash: where things go, the sweep machinery and the
#: seed (runs of one configuration with different seeds share a hash), and resuming (same run).
HASH_EXCLUDE: tuple[str, ...] = ("paths", "hydra", "seed", "ckpt_path", "sweep_id")

T = TypeVar("T")

_PACKAGE_DIR = Path(__file__).resolve().parent


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _source_dirs() -> list[Path]:
    """The package and its Hydra tree (``conf/`` next to ``src/`` in a checkout, or ``fidesr/conf``)."""
    dirs = [_PACKAGE_DIR]
    for conf in (_PACKAGE_DIR.parents[1] / "conf", _PACKAGE_DIR / "conf"):
        if conf.is_dir():
            dirs.append(conf)
            break
    return dirs


def git_info() -> dict[str, Any]:
    """``{"git_commit": sha or "unknown", "git_dirty": bool | None}`` of the checkout holding the package.

    ``git_dirty`` looks at the package source and the config tree only (tracked changes and new files),
    so outputs or notebooks elsewhere in the repository do not mark a run dirty. A package installed into
    a git-ignored folder (a virtual environment inside some checkout) has no commit of its own: unknown.
    """
    commit = _git(["rev-parse", "HEAD"], _PACKAGE_DIR)
    if not commit or _git(["check-ignore", "-q", str(_PACKAGE_DIR)], _PACKAGE_DIR) is not None:
        return {"git_commit": "unknown", "git_dirty": None}
    status = _git(["status", "--porcelain", "--", *map(str, _source_dirs())], _PACKAGE_DIR)
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def source_files() -> dict[str, str]:
    """``{relative path: sha256[:16]}`` of the package's ``.py`` and the config ``.yaml`` files.

    Not cached: a file edited while a sweep runs shows in the records of the later jobs, and
    ``fidesr-report`` names the files that differ between jobs.
    """
    out = {}
    for root in _source_dirs():
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
            if "__pycache__" not in path.parts:
                out[str(path.relative_to(root.parent))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def code_hash(files: Mapping[str, str] | None = None) -> str:
    """sha256 over :func:`source_files` (names and contents): catches uncommitted edits the commit cannot."""
    files = source_files() if files is None else files
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("fidesr")
    except Exception:  # not installed (source checkout on sys.path)
        return "unknown"


def _set_dotted(container: dict[str, Any], dotted: str, value: Any) -> bool:
    node: Any = container
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    if not isinstance(node, dict) or leaf not in node:
        return False
    node[leaf] = value
    return True


def _del_dotted(container: dict[str, Any], dotted: str) -> None:
    node: Any = container
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(leaf, None)


def _mask_hydra(node: Any) -> Any:
    """Values taken from Hydra's runtime (``${hydra:job.override_dirname}``) are run-specific: masked."""
    if isinstance(node, dict):
        return {k: _mask_hydra(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_hydra(v) for v in node]
    return "<hydra>" if isinstance(node, str) and "${hydra:" in node else node


def comparable_config(
    cfg: DictConfig | Mapping[str, Any], exclude: Iterable[str] = HASH_EXCLUDE
) -> dict[str, Any]:
    """The resolved config with the ``exclude`` keys (dotted paths) neutralised.

    An excluded key is replaced by a placeholder *before* resolving and dropped afterwards, so values
    derived from it by interpolation (``model.seed: ${seed}``, ``dirpath: ${paths.output_dir}/ckpt``,
    ``model.daw: ${daw}``) do not make two otherwise identical runs hash differently.
    """
    exclude = list(exclude)
    raw = (
        OmegaConf.to_container(cfg, resolve=False)
        if isinstance(cfg, DictConfig)
        else json.loads(json.dumps(cfg))
    )
    text = json.dumps(raw)
    for key in exclude:
        node = raw.get(key) if "." not in key else None
        if isinstance(node, dict) and "${" + key + "." in text:
            # Sub-keys are interpolated elsewhere (${paths.output_dir}): one placeholder per entry.
            for sub in node:
                node[sub] = f"<{key}.{sub}>"
        else:  # one placeholder for the whole node: a swept group may be a mapping in one job, null in another
            _set_dotted(raw, key, f"<{key}>")
    raw = _mask_hydra(raw)
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception as err:  # e.g. ${hydra:...} outside a Hydra app: hash the unresolved form
        log.debug("config hash on the unresolved config (%s)", err)
        resolved = raw
    for key in exclude:
        _del_dotted(resolved, key)
    return resolved


def config_hash(cfg: DictConfig | Mapping[str, Any], exclude: Iterable[str] = HASH_EXCLUDE) -> str:
    """sha256 (hex) of :func:`comparable_config` serialised with sorted keys."""
    blob = json.dumps(comparable_config(cfg, exclude), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_rank_zero() -> bool:
    # DDP children (Lightning sets LOCAL_RANK/RANK; SLURM sets SLURM_PROCID) must not write the record.
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def hydra_multirun() -> tuple[bool, Path | None, Path | None]:
    """(is multirun, job dir, sweep dir) from Hydra's runtime config, if a Hydra app is running (the job
    dir is None outside a multirun). What a sweep job writes where: :func:`use_job_dir`."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return False, None, None
    if not HydraConfig.initialized():
        return False, None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return False, None, None
    return True, Path(hc.runtime.output_dir), Path(str(hc.sweep.dir))


def collect_run_info(cfg: DictConfig, status: str = "running") -> dict[str, Any]:
    """The record for ``cfg`` (see module doc); times are ISO 8601 with the UTC offset."""
    multirun, job_dir, sweep_dir = hydra_multirun()
    files = source_files()
    info: dict[str, Any] = {
        "status": status,
        "start_time": _now(),
        "end_time": None,
        **git_info(),
        "code_hash": code_hash(files),
        "package_version": package_version(),
        "config_hash": config_hash(cfg),
        "seed": cfg.get("seed"),
        "task_name": cfg.get("task_name"),
        "sweep_id": cfg.get("sweep_id"),
        "sweep_dir": str(sweep_dir) if multirun else None,
        "job_dir": str(job_dir) if multirun else None,
        "host": socket.gethostname(),
        "source_files": files,
    }
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            info["overrides"] = list(HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover - informational only
        pass
    return info


def write_run_info(out_dir: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``<out_dir>/run_info.json`` atomically."""
    return atomic_write_text(Path(out_dir) / RUN_INFO, json.dumps(dict(info), indent=2, default=str) + "\n")


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a run directory, or None when it has none (older runs) or it is unreadable."""
    path = Path(run_dir) / RUN_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def use_job_dir(cfg: DictConfig, key: str = "paths.output_dir") -> Path | None:
    """The multirun output rule, the one place it lives: a sweep job writes into its own job folder
    (``hydra.sweep.dir/<num>_<overrides>``), so ``cfg``'s ``key`` is set to it (``paths.output_dir``:
    fidesr-train and :func:`run_job`; ``output_dir``: fidesr-eval). Returns the job folder; None outside a
    multirun, ``cfg`` untouched."""
    _, job_dir, _ = hydra_multirun()
    if job_dir is not None:
        OmegaConf.update(cfg, key, str(job_dir), force_add=True)
    return job_dir


def _name_sweep_job(cfg: DictConfig, sweep_dir: Path, job_dir: Path) -> None:
    """``sweep_id`` (the W&B group of every job of the sweep) and the W&B run name (the job folder without
    its number), unless the config sets them."""
    with open_dict(cfg):
        if cfg.get("sweep_id") is None:
            cfg.sweep_id = f"{cfg.get('task_name', 'sweep')}_{sweep_dir.name}"
        wandb = OmegaConf.select(cfg, "logger.wandb")
        if isinstance(wandb, DictConfig) and wandb.get("_target_") and wandb.get("name") is None:
            num, _, rest = job_dir.name.partition("_")
            wandb.name = rest if num.isdigit() and rest else job_dir.name


def run_job(task: Callable[[DictConfig], T], cfg: DictConfig) -> T | None:
    """Run ``task(cfg)`` with a ``run_info.json`` record; isolate failures of multirun jobs.

    Before the task, in a multirun: sets ``cfg.sweep_id`` (from the sweep folder's name, when not given), so
    every job of one sweep shares one W&B group (``logger.wandb.group: ${oc.select:sweep_id,...}``), and
    names the job's W&B run after its folder (when ``logger.wandb.name`` is null). Then writes the record
    with status ``running``. After: ``completed`` or ``failed`` (+ error, traceback, ``error.txt``).

    Returns:
        The task's return value; ``None`` for a failed multirun job (the exception is logged, not raised).

    Raises:
        Whatever the task raised, outside a multirun (and ``KeyboardInterrupt`` always: the user stops
        the whole sweep, not one job).
    """
    multirun, job_dir, sweep_dir = hydra_multirun()
    if multirun and sweep_dir is not None and job_dir is not None:
        _name_sweep_job(cfg, sweep_dir, job_dir)
    use_job_dir(cfg)
    out_dir = Path(cfg.paths.output_dir)
    writer = _is_rank_zero()
    info = collect_run_info(cfg) if writer else {}
    if writer:
        write_run_info(out_dir, info)
    try:
        result = task(cfg)
    except TrainingInterrupted as stop:  # the user stops the whole sweep: recorded, then re-raised
        if writer:
            info.update(status="interrupted", end_time=_now(), error=str(stop))
            write_run_info(out_dir, info)
        raise
    except Exception as err:
        tb = traceback.format_exc()
        if writer:
            info.update(status="failed", end_time=_now(), error=f"{type(err).__name__}: {err}", traceback=tb)
            write_run_info(out_dir, info)
            (out_dir / ERROR_FILE).write_text(tb)
        finish_wandb(exit_code=1)  # the task may have failed before its own finally
        if not multirun:
            raise
        log.error(
            "job failed (the sweep goes on): %s: %s; traceback in %s",
            type(err).__name__,
            err,
            out_dir / ERROR_FILE,
        )
        return None
    if writer:
        info.update(status="completed", end_time=_now())
        write_run_info(out_dir, info)
    return result


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders: those with a run record or Hydra's ``.hydra`` (a job that wrote no record)."""
    return sorted(
        p for p in sweep_dir.iterdir() if p.is_dir() and ((p / RUN_INFO).is_file() or (p / ".hydra").is_dir())
    )


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, list every job's status; exit non-zero on failures.

    Configure it (in an experiment or ``conf/hydra``) as::

        hydra:
          callbacks:
            sweep_summary:
              _target_: fidesr.runinfo.SweepSummary
              fail_on_error: true

    Jobs are the sweep folder's sub-folders with a ``run_info.json`` (written by :func:`run_job`) or a
    ``.hydra`` record; a job without ``run_info.json`` counts as ``unknown``. The summary is printed and
    written to ``<sweep dir>/sweep_status.json``.
    """

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = []
        for job in _job_dirs(sweep_dir):
            info = read_run_info(job) or {"error": f"no {RUN_INFO} (the job did not run through run_job)"}
            jobs.append(
                {"job": job.name, "status": info.get("status", "unknown"), "error": info.get("error")}
            )
        # Only recorded failures fail the sweep: "running" is another process's job sharing the folder (or a
        # killed one), "unknown" a job without a record; both are listed.
        failed = [j for j in jobs if j["status"] == "failed"]
        other = [j for j in jobs if j["status"] not in ("completed", "failed")]
        (sweep_dir / "sweep_status.json").write_text(json.dumps({"jobs": jobs}, indent=2) + "\n")
        done = sum(j["status"] == "completed" for j in jobs)
        lines = [f"fidesr sweep {sweep_dir}: {done}/{len(jobs)} jobs completed"]
        for j in [*failed, *other]:
            error = " ".join(str(j["error"] or "").split())[:300]  # one line; the traceback is in error.txt
            lines.append(f"  {j['status'].upper()} {j['job']}: {error} (see {j['job']}/{ERROR_FILE})")
        if jobs:
            lines.append(f"  report: fidesr-report {sweep_dir}")
        print("\n".join(lines), flush=True)
        if failed and self.fail_on_error:
            raise SystemExit(1)
