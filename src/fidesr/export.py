"""Trained-weight files: training checkpoints, the exported adapter file, the official FiDeSR ``.pkl``.

All three reduce to the same two things, which :meth:`fidesr.pipeline.FiDeSRPipeline.from_parts` turns into
a pipeline:

* ``config``: a dict with the sections ``backbone`` (a Hydra node with ``_target_``), ``lrrb`` and ``lfim``
  (Hydra nodes or None) and ``model`` (``color_fix``, ``min_lq_size``);
* ``state``: the trained tensors, ``unet.<name in the peft-wrapped unet.state_dict()>`` for LoRA and
  ``lrrb.<name>`` for the LRRB.

Adapter file (``fidesr-upscale export CKPT -o adapter.safetensors``): a safetensors file holding exactly
those tensors (float32, as trained) with the config as JSON in the header metadata under ``"fidesr"``
(``{"format": "fidesr-adapter", "version": 1, "config": {...}, "source": {...}}``). A few MB instead of a
checkpoint with optimizer state, loadable without pickle, and the round trip is bit-exact.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ADAPTER_FORMAT = "fidesr-adapter"
ADAPTER_VERSION = 1
CONFIG_SECTIONS = ("backbone", "lrrb", "lfim", "model")
MODEL_KEYS = ("color_fix", "min_lq_size")
# Backbone settings that carry over when ``pretrained`` replaces a preset without such a key (tiny).
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_init", "lora_targets", "timestep", "prediction")


class AdapterFormatError(ValueError):
    """A file is not what its loader expects; the message names the file and what is wrong."""


def canonical_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LightningModule state dict -> ``unet.*`` (LoRA) and ``lrrb.*`` tensors.

    Checkpoints key LoRA as ``backbone.unet.<...lora_...>``; ``backbone.<...lora_...>`` without ``unet.`` is
    read as well (the same tensors under the names ``StableDiffusionBackbone.lora_state_dict`` returns).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("lrrb."):
            out[key] = value
        elif key.startswith("backbone.") and "lora_" in key:
            rest = key[len("backbone.") :]
            out[rest if rest.startswith("unet.") else f"unet.{rest}"] = value
    return out


def trained_state(backbone, lrrb: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The tensors an adapter holds, from live modules: ``unet.*`` LoRA (unmerged) and ``lrrb.*``."""
    state = {f"unet.{k}": v for k, v in backbone.lora_state_dict().items()}
    if lrrb is not None:
        state.update({f"lrrb.{k}": v for k, v in lrrb.state_dict().items()})
    return state


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state) of a ``fidesr-train`` checkpoint. Raises naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Lightning checkpoints pickle loop and callback state: the user's own training file, trusted.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise AdapterFormatError(f"{path} is not a Lightning checkpoint (no state_dict)")
    run_config = (ckpt.get("fidesr") or {}).get("config")
    if not run_config:
        raise AdapterFormatError(
            f"{path} has no fidesr config (checkpoint['fidesr']['config']): it was not written by fidesr-train"
        )
    config = {k: run_config.get(k) for k in CONFIG_SECTIONS}
    config["model"] = {k: (run_config.get("model") or {}).get(k) for k in MODEL_KEYS}
    if not config["backbone"]:
        raise AdapterFormatError(f"{path}: the stored config has no backbone section")
    return config, canonical_state(ckpt["state_dict"])


def build_from_config(config: Mapping[str, Any], pretrained: str | os.PathLike | None = None):
    """(backbone, lrrb or None, lfim or None) from a stored config, for inference.

    The backbone is loaded in float32 without gradient checkpointing (the pipeline merges LoRA, then
    casts). ``pretrained`` replaces the base SD location; for presets without one (``tiny``) it loads that
    folder through ``StableDiffusionBackbone.from_pretrained`` with the same LoRA setup.
    """
    from hydra.utils import instantiate

    cfg = dict(config["backbone"])
    cfg.update(gradient_checkpointing=False, frozen_dtype=None)
    if pretrained is not None:
        if "pretrained" in cfg:
            cfg["pretrained"] = str(pretrained)
        else:
            keep = {k: cfg[k] for k in _LORA_KEYS if k in cfg}
            cfg = {"_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
                   "pretrained": str(pretrained), **keep}  # fmt: skip
    backbone = instantiate(cfg, _convert_="all")
    lrrb = instantiate(dict(config["lrrb"]), _convert_="all") if config.get("lrrb") else None
    lfim = instantiate(dict(config["lfim"]), _convert_="all") if config.get("lfim") else None
    return backbone, lrrb, lfim


def save_adapter(path: str | os.PathLike, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                 source: Mapping[str, Any] | None = None) -> Path:  # fmt: skip
    """Write the adapter file atomically (``imageio.atomic_write``). Tensors are stored as they are."""
    from safetensors.torch import save

    from fidesr.data.imageio import atomic_write

    path = Path(path)
    header = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "config": dict(config), "source": dict(source or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_write(path, fsync=True) as fh:
        fh.write(save(tensors, metadata={"fidesr": json.dumps(header)}))
    return path


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state) of an adapter file written by :func:`save_adapter`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # safetensors raises its own error types
        raise AdapterFormatError(f"{path} is not a safetensors file: {err}") from err
    try:
        header = json.loads(meta["fidesr"])
    except (KeyError, json.JSONDecodeError) as err:
        raise AdapterFormatError(f"{path} has no fidesr metadata: not written by `fidesr-upscale export`") from err
    if header.get("format") != ADAPTER_FORMAT or int(header.get("version", 0)) > ADAPTER_VERSION:
        raise AdapterFormatError(f"{path}: unsupported adapter format {header.get('format')} v{header.get('version')}")
    return header["config"], state


def export_adapter(ckpt: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Training checkpoint -> adapter file (LoRA + LRRB tensors + the config to rebuild the model)."""
    config, state = read_checkpoint(ckpt)
    if not any(k.startswith("unet.") for k in state):
        raise AdapterFormatError(f"{ckpt} holds no LoRA tensors (backbone.unet.*lora_*): nothing to export")
    return save_adapter(out, config, state, source={"checkpoint": Path(ckpt).name})


def load_official(path: str | os.PathLike) -> dict[str, Any]:
    """The official FiDeSR ``.pkl`` as a dict, checked for the keys the loader needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - older pickles may hold more than tensors and containers
        warnings.warn(f"{path}: not loadable with weights_only=True ({type(err).__name__}); "
                      "loading it as a full pickle: only do this with files you trust", stacklevel=2)  # fmt: skip
        sd = torch.load(path, map_location="cpu", weights_only=False)
    need = ("unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules",
            "lora_rank_unet", "state_dict_unet")  # fmt: skip
    missing = [k for k in need if k not in sd] if isinstance(sd, dict) else list(need)
    if missing:
        raise AdapterFormatError(f"{path} is not an official FiDeSR checkpoint: missing {missing}")
    return sd
