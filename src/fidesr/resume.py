"""Resuming a training run (``fidesr-train <the run's overrides> ckpt_path=last``): which checkpoint, and
whether it fits this run.

- ``ckpt_path=last`` reads the newest checkpoint of the run: ``checkpoints/last.ckpt``, rewritten at every
  checkpoint and at the end of training (never versioned to ``last-v1.ckpt``); in a folder that older
  versions left ``last-vN.ckpt`` files in, the one with the highest global step.
- The checkpoint's stored config (``checkpoint["fidesr"]["config"]``, the resolved run config) against
  this run's: a training hyper-parameter that changed would be recorded in config.yaml while the restored
  optimizer state trains with the stored one, so any difference outside :data:`RESUME_MAY_CHANGE` is
  refused, all of them listed on one line.
- The checkpoint's tensors against the model's trainable tensors (another LoRA rank, ``lrrb=off``): one
  line, not Lightning's traceback.
- Temporary ``.part`` files that a killed checkpoint write (kill -9) left behind are removed at start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fidesr.errors import ConfigValueError

log = logging.getLogger(__name__)

# Keys (dotted prefixes) that may change on resume: where things go, what is logged and validated, how
# often, and how long to train. Nothing here changes the weights of a training step.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "ckpt_path",
    "paths",
    "logger",
    "callbacks",
    "metrics",
    "tags",
    "task_name",
    "test",
    "validate_before_fit",
    "optimized_metric",
    "sweep_id",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "data.val_sets",
    "data.test_sets",
    "data.predict_dir",
    "data.val_batch_size",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "backbone.pretrained",  # the base model's location (the same model, moved)
    "backbone.local_files_only",
)
_ABSENT = "<absent>"


def newest_last_checkpoint(folder: Path) -> Path:
    """``folder/last.ckpt``, or the ``last*.ckpt`` with the highest global step when an older version
    left ``last-vN.ckpt`` files beside it (read memory-mapped: only the step is looked at)."""
    import torch

    candidates = sorted(folder.glob("last*.ckpt"))
    if len(candidates) <= 1:
        return folder / "last.ckpt"

    def step(path: Path) -> int:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return int(ckpt.get("global_step", -1))
        except Exception:  # unreadable: never the newest
            return -1

    return max(candidates, key=lambda p: (step(p), p.name == "last.ckpt"))


def _walk(stored: Any, current: Any, key: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, stored value, current value) for every leaf that differs."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        for k in [*stored, *(k for k in current if k not in stored)]:
            yield from _walk(stored.get(k, _ABSENT), current.get(k, _ABSENT), f"{key}.{k}" if key else str(k))
    elif isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for i, (a, b) in enumerate(zip(stored, current, strict=True)):
            yield from _walk(a, b, f"{key}.{i}")
    elif stored != current:
        yield key, stored, current


def _interpolated(unresolved: Any, key: str) -> bool:
    """Whether ``key`` (or a key above it) is an interpolation in this run's unresolved config: its value
    follows its source (compared at the source's own key), or an environment variable (a location)."""
    node = unresolved
    for part in key.split("."):
        if isinstance(node, str):
            break
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return isinstance(node, str) and "${" in node


def may_change(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RESUME_MAY_CHANGE)


def config_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], unresolved: Mapping[str, Any]
) -> list[str]:
    """``key: stored -> current`` for every training setting that differs between the checkpoint's stored
    (resolved) config and this run's resolved ``current`` one; keys in :data:`RESUME_MAY_CHANGE` and keys
    interpolated in this run's ``unresolved`` config are left out."""
    return [
        f"{k}: {_short(a)} -> {_short(b)}"
        for k, a, b in _walk(stored, current, "")
        if not may_change(k) and not _interpolated(unresolved, k)
    ]


def _short(value: Any, limit: int = 60) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_resume_config(
    ckpt_path: str, checkpoint: Mapping[str, Any], current: Mapping, unresolved: Mapping
) -> None:
    """Refuse a resume whose training settings differ from the checkpoint's (one line, every difference)."""
    stored = (checkpoint.get("fidesr") or {}).get("config")
    if not isinstance(stored, Mapping):
        log.warning("%s holds no run config (not written by fidesr-train): settings not compared", ckpt_path)
        return
    diffs = config_differences(stored, current, unresolved)
    if diffs:
        raise ConfigValueError(
            f"ckpt_path={ckpt_path}: the run was trained with other settings; resuming would record these "
            f"but continue with the checkpoint's: {'; '.join(diffs)} (resume with the run's own settings, "
            "or start a new run in another paths.output_dir)"
        )


def check_checkpoint_tensors(ckpt_path: str, state: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose trainable tensors do not fit the model (one line).

    Args:
        state: the checkpoint's ``state_dict`` (tensors by name).
        expected: the model's trainable tensors by name (what the checkpoint must hold, same shapes).
    """
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {list(state[k].shape)} in the checkpoint, {list(expected[k].shape)} here"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else "",
        f"{len(extra)} not in this model (e.g. {extra[0]})" if extra else "",
        f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else "",
    ]
    if any(parts):
        raise ConfigValueError(
            f"ckpt_path={ckpt_path}: the checkpoint does not fit this model ({'; '.join(p for p in parts if p)}): "
            "was it trained with another backbone.lora_rank, lrrb or backbone.lora_sets?"
        )


def remove_stale_parts(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.ckpt.<random>.part``, :func:`fidesr.files.atomic_write`)
    that a killed checkpoint write left in ``folder``; called before training starts, when nothing writes
    there. Returns the removed paths."""
    removed = []
    for part in folder.glob(".*.ckpt.*.part") if folder.is_dir() else ():
        if part.is_file() or part.is_symlink():
            part.unlink(missing_ok=True)
            removed.append(part)
    if removed:
        log.info("removed %d stale temporary checkpoint file(s) in %s", len(removed), folder)
    return removed


def rank_zero() -> bool:
    """Whether this process is the global rank 0 (before the strategy is set up: from the environment)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
