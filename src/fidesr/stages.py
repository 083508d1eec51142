"""Training stages: which LoRA sets are active and trained, and which losses act, step by step.

A method that trains in phases (PiSA-SR: a pixel stage with the MSE alone on its pixel LoRA set, then a
semantic stage with the full loss on its semantic set, the pixel set frozen) is a :class:`StageSchedule`
in its config (``conf/stages/``); the training module asks the schedule for the stage of the current step
and follows it, without knowing the method. No schedule (``stages=none``): one stage, every adapter
active and trained, every configured loss on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Stage", "StageSchedule"]


@dataclass(frozen=True)
class Stage:
    """One phase of training.

    Args:
        name: shown in messages (e.g. ``"pixel"``).
        steps: how many optimiser steps it lasts; None: until the end (the last stage only).
        lora_sets: the backbone's LoRA sets active in this stage (None: all of them).
        trained: the sets trained in it (None: the active ones); the others active are frozen.
        perceptual: whether the perceptual loss (and so DAW's error map) acts.
        distill: whether the distillation term acts.
    """

    name: str
    steps: int | None = None
    lora_sets: tuple[str, ...] | None = None
    trained: tuple[str, ...] | None = None
    perceptual: bool = True
    distill: bool = True

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) < 0):
            raise ValueError(f"stage {self.name!r}: steps must be a number >= 0 or null, got {self.steps!r}")
        for key in ("lora_sets", "trained"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(str(v) for v in value))
        if self.trained is not None and not set(self.trained) <= set(self.lora_sets or self.trained):
            raise ValueError(f"stage {self.name!r}: trained sets {list(self.trained)} must be active ones")


class StageSchedule:
    """Stages in order; :meth:`at` gives the one of a global step.

    Args:
        stages: :class:`Stage` objects or mappings of their fields (what a Hydra config gives); every
            stage but the last has ``steps``.
    """

    def __init__(self, stages: Sequence[Stage | Mapping[str, Any]]) -> None:
        built = [s if isinstance(s, Stage) else Stage(**dict(s)) for s in stages]
        if not built:
            raise ValueError("stages: a schedule needs at least one stage")
        open_ended = [s.name for s in built[:-1] if s.steps is None]
        if open_ended:
            raise ValueError(f"stages: only the last stage may run to the end; {open_ended} have no steps")
        self.stages: tuple[Stage, ...] = tuple(built)

    def __repr__(self) -> str:
        return f"StageSchedule({[(s.name, s.steps) for s in self.stages]})"

    def at(self, step: int) -> Stage:
        """The stage of global step ``step`` (0-based); past every stage's steps, the last one."""
        end = 0
        for stage in self.stages:
            if stage.steps is None:
                return stage
            end += int(stage.steps)
            if step < end:
                return stage
        return self.stages[-1]

    def check(self, lora_sets: Sequence[str], daw: bool) -> None:
        """Refuse a schedule that names LoRA sets the backbone lacks (``lora_sets``) or switches off the
        perceptual loss while DAW is on (DAW's error map is the LPIPS map)."""
        for stage in self.stages:
            named = set(stage.lora_sets or ()) | set(stage.trained or ())
            unknown = sorted(named - set(lora_sets))
            if unknown:
                raise ValueError(
                    f"stage {stage.name!r} names LoRA sets {unknown} the backbone does not have "
                    f"(backbone.lora_sets: {list(lora_sets)})"
                )
            if daw and not stage.perceptual:
                raise ValueError(
                    f"stage {stage.name!r} has no perceptual loss, which DAW's error map needs: use daw=off"
                )
