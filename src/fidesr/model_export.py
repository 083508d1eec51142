"""The exported folder's writer (``TrainedWeights.save_pretrained``, ``fidesr-export``): the LoRA in
diffusers/PEFT format written by diffusers' own ``save_lora_weights``, the LRRB as safetensors, the model
card and ``config.json`` (layout in :mod:`fidesr.model_files`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from fidesr.backbone.lora import LORA_SETS
from fidesr.data.imageio import atomic_write
from fidesr.errors import ModelFileError
from fidesr.model_card import model_card
from fidesr.model_files import (
    _ADAPTER_KEY,
    _SET_ADAPTER,
    CARD_FILE,
    CONFIG_FILE,
    EXTRAS_FILE,
    FOLDER_FORMAT,
    FOLDER_VERSION,
    FOLDER_VERSION_SETS,
    LORA_FILE,
    LRRB_FILE,
    OFFICIAL_LORA_ALPHA,
    TrainedWeights,
)


def write_folder(
    self: TrainedWeights,
    folder: str | os.PathLike,
    overwrite: bool = False,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write the exported folder (module doc): LoRA in diffusers' format via diffusers' own
    ``save_lora_weights``, the LRRB as safetensors, ``config.json`` and a model card.

    Every file is written under a temporary name and renamed into place. ``overwrite=False`` refuses a
    folder that already holds an export.
    """
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from safetensors.torch import save

    folder = Path(folder)
    if self.info.get("full_weights"):
        raise ModelFileError(
            f"{self.source}: a merged model (full UNet and VAE weights, no LoRA) has no adapter to export; "
            "use the file itself (--model FILE)"
        )
    # What diffusers' LoRA file cannot hold goes to extras.safetensors under fidesr's own names: OSEDiff's
    # VAE-encoder LoRA ("vae.*") and its fully trained conv_in ("unet.conv_in.base_layer.*").
    extras = {k: v.detach().cpu().contiguous() for k, v in self.state.items() if _is_extra(k)}
    if folder.exists() and not folder.is_dir():
        raise ModelFileError(f"{folder} exists and is not a folder")
    if (folder / CONFIG_FILE).exists() and not overwrite:
        raise ModelFileError(f"{folder} already holds an exported model (use --overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    sets = [s for s in LORA_SETS if any(re.search(rf"\.{_SET_ADAPTER}_{s}\.weight$", k) for k in self.state)]
    weights: str | dict[str, str] = LORA_FILE if not sets else {s: f"{s}/{LORA_FILE}" for s in sets}
    split: dict[str, list[str]] = {}
    alpha = float(self.config["backbone"].get("lora_alpha", OFFICIAL_LORA_ALPHA) or OFFICIAL_LORA_ALPHA)
    for lora_set in sets or [None]:
        lora, set_split, rank = _diffusers_lora(self, lora_set)
        split.update(set_split)
        modules = sorted({m for mods in set_split.values() for m in mods})
        metadata = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules).to_dict()
        target = folder if lora_set is None else folder / lora_set
        target.mkdir(exist_ok=True)
        # diffusers writes the file itself (its own format and metadata); it is renamed into place after.
        tmp = target / f".{LORA_FILE}.part"
        tmp.mkdir(exist_ok=True)
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=lora, unet_lora_adapter_metadata=metadata
        )
        os.replace(tmp / LORA_FILE, target / LORA_FILE)
        tmp.rmdir()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(target / LORA_FILE, 0o666 & ~umask)  # the usual permissions, as every file fidesr writes
    lrrb = {
        k[len("lrrb.") :]: v.detach().cpu().contiguous()
        for k, v in self.state.items()
        if k.startswith("lrrb.")
    }
    if lrrb:
        with atomic_write(folder / LRRB_FILE, fsync=True) as fh:
            fh.write(save(lrrb))
    if extras:
        with atomic_write(folder / EXTRAS_FILE, fsync=True) as fh:
            fh.write(save(extras))
    meta = {
        "format": FOLDER_FORMAT,
        "version": FOLDER_VERSION_SETS if sets else FOLDER_VERSION,
        "config": self.config,
        "lora": {"rank": rank, "alpha": alpha, "weights": weights, "adapters": split},
        "lrrb": LRRB_FILE if lrrb else None,
        "extras": EXTRAS_FILE if extras else None,
        "base_model": self.base_model,
        "source": Path(self.source).name,
        "training": {k: v for k, v in self.info.items() if k == "global_step" and v is not None},
    }
    with atomic_write(folder / CARD_FILE) as fh:
        fh.write(model_card(self, rank, alpha, LORA_FILE, LRRB_FILE, metrics).encode())
    # config.json last: its presence marks a complete export.
    with atomic_write(folder / CONFIG_FILE, fsync=True) as fh:
        fh.write(json.dumps(meta, indent=2, sort_keys=False).encode())
    return folder


def _diffusers_lora(
    self: TrainedWeights, lora_set: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], int]:
    """(LoRA tensors named as peft's ``get_peft_model_state_dict`` names them, module lists per adapter,
    rank) from the adapter-qualified names; diffusers' writer adds the ``unet.`` prefix. ``lora_set``:
    only the adapters of that LoRA set (``"pix"`` / ``"sem"``, whose modules coincide)."""
    out: dict[str, torch.Tensor] = {}
    split: dict[str, list[str]] = {}
    ranks = set()
    for key, value in self.state.items():
        if not key.startswith("unet.") or _is_extra(key):
            continue
        m = _ADAPTER_KEY.match(key[len("unet.") :])
        if m is None:
            raise ModelFileError(f"{self.source}: {key!r} is not a LoRA tensor this exporter knows")
        if lora_set is not None and not m["adapter"].endswith(f"_{lora_set}"):
            continue
        out[f"{m['module']}.{m['part']}.weight"] = value.detach().cpu().contiguous()
        if m["part"] == "lora_A":
            split.setdefault(m["adapter"], []).append(m["module"])
            ranks.add(int(value.shape[0]))
    if len(ranks) != 1:
        raise ModelFileError(f"{self.source}: LoRA ranks {sorted(ranks)}: expected one rank for all adapters")
    return out, {a: sorted(mods) for a, mods in split.items()}, ranks.pop()


def _is_extra(key: str) -> bool:
    """A tensor of the extras file: the VAE-encoder LoRA, or a trained UNet tensor that is not LoRA."""
    return key.startswith("vae.") or (key.startswith("unet.") and "lora_" not in key)
