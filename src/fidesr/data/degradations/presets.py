"""Load the degradation presets shipped as Hydra configs (``conf/degradation/*.yaml``)."""

from __future__ import annotations

import importlib.resources
from typing import Any

from omegaconf import OmegaConf

from .base import Degradation

PRESETS: tuple[str, ...] = ("bicubic", "bicubic_clean", "osediff", "pisasr")


def preset_config(name: str, **overrides: Any):
    """The preset's config (``DictConfig`` with ``_target_``), with constructor arguments overridden.

    Reads the packaged YAML directly (no Hydra global state), so it also works inside a running Hydra app.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; expected one of {PRESETS}")
    text = (importlib.resources.files("fidesr.conf") / "degradation" / f"{name}.yaml").read_text()
    cfg = OmegaConf.create(text)
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f"preset {name!r} has no argument {key!r}")
        cfg[key] = value
    return cfg


def load_preset(name: str, **overrides: Any) -> Degradation:
    """Instantiate a preset, e.g. ``load_preset("osediff", resize_back=False)``."""
    from hydra.utils import instantiate

    return instantiate(preset_config(name, **overrides), _convert_="all")
