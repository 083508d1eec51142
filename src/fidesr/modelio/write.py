"""The exported folder's writer (``TrainedWeights.save_pretrained``, ``fidesr-export``): the LoRA in
diffusers/PEFT format written by diffusers' own ``save_lora_weights``, the LRRB as safetensors, the model
card and ``config.json`` (layout in :mod:`fidesr.modelio.layout`).

It reads only the fields of the :class:`~fidesr.modelio.read.TrainedWeights` it is given
(:class:`~fidesr.modelio.card.Exportable`): the reader imports this module for ``save_pretrained``, this
module imports no reader."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from fidesr.backbone.lora import LORA_SETS
from fidesr.errors import ModelFileError
from fidesr.modelio.card import Exportable, model_card
from fidesr.modelio.layout import (
    ADAPTER_KEY,
    CARD_FILE,
    CONFIG_FILE,
    EXTRAS_FILE,
    FOLDER_FORMAT,
    FOLDER_VERSION,
    FOLDER_VERSION_SETS,
    LORA_FILE,
    LRRB_FILE,
    OFFICIAL_LORA_ALPHA,
    SET_ADAPTER,
)

log = logging.getLogger(__name__)

# The sibling folders an export works in, ``.<folder name>.<random><suffix>`` beside the folder: the new
# export while it is written, and the previous one while the new one is renamed into its place.
_NEW, _OLD = ".export-new", ".export-old"


def write_folder(
    self: Exportable,
    folder: str | os.PathLike,
    overwrite: bool = False,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write the exported folder (module doc): LoRA in diffusers' format via diffusers' own
    ``save_lora_weights``, the LRRB as safetensors, ``config.json`` and a model card.

    Atomic: the whole export is written into a fresh temporary sibling folder (``tempfile.mkdtemp``:
    created exclusively, never through an existing name or symlink), then swapped in (the previous folder
    renamed away, the new one renamed into place, the previous one removed). On any failure (a full disk,
    Ctrl-C) the previous export is intact and the temporary folder removed; one that a killed export left
    is removed on the next export to the same folder (a previous export left renamed away is put back).
    Files the previous folder held beside the export (a ``.git``, notes) are kept. A symlink given as
    the folder is replaced by the folder, its target left alone. ``overwrite=False`` refuses a folder
    that already holds an export.
    """
    folder = Path(folder)
    if self.info.get("full_weights"):
        raise ModelFileError(
            f"{self.source}: a merged model (full UNet and VAE weights, no LoRA) has no adapter to export; "
            "use the file itself (--model FILE)"
        )
    clean_stale_exports(folder)  # first: a previous export that a killed one left aside is back in place
    if folder.exists() and not folder.is_dir():
        raise ModelFileError(f"{folder} exists and is not a folder")
    if (folder / CONFIG_FILE).exists() and not overwrite:
        raise ModelFileError(f"{folder} already holds an exported model (use --overwrite)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=_NEW, dir=folder.parent))
    try:
        _write_export(self, tmp, metrics)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700: the usual permissions of a folder
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_export(self: Exportable, out: Path, metrics: Mapping[str, float] | None) -> None:
    """Every file of the export into the fresh folder ``out``, each flushed to disk (``fsync``)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from safetensors.torch import save

    sets = [s for s in LORA_SETS if any(re.search(rf"\.{SET_ADAPTER}_{s}\.weight$", k) for k in self.state)]
    weights: str | dict[str, str] = LORA_FILE if not sets else {s: f"{s}/{LORA_FILE}" for s in sets}
    split: dict[str, list[str]] = {}
    alpha = float(self.config["backbone"].get("lora_alpha", OFFICIAL_LORA_ALPHA) or OFFICIAL_LORA_ALPHA)
    umask = os.umask(0)
    os.umask(umask)
    for lora_set in sets or [None]:
        lora, set_split, rank = _diffusers_lora(self, lora_set)
        split.update(set_split)
        modules = sorted({m for mods in set_split.values() for m in mods})
        metadata = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules).to_dict()
        target = out if lora_set is None else out / lora_set
        target.mkdir(exist_ok=True)
        # diffusers writes the file itself (its own format and metadata).
        StableDiffusionPipeline.save_lora_weights(
            target, unet_lora_layers=lora, unet_lora_adapter_metadata=metadata
        )
        os.chmod(target / LORA_FILE, 0o666 & ~umask)  # the usual permissions, as every file fidesr writes
        _fsync(target / LORA_FILE)
    lrrb = {
        k[len("lrrb.") :]: v.detach().cpu().contiguous()
        for k, v in self.state.items()
        if k.startswith("lrrb.")
    }
    if lrrb:
        _write(out / LRRB_FILE, save(lrrb))
    # What diffusers' LoRA file cannot hold goes to extras.safetensors under fidesr's own names: OSEDiff's
    # VAE-encoder LoRA ("vae.*") and its fully trained conv_in ("unet.conv_in.base_layer.*").
    extras = {k: v.detach().cpu().contiguous() for k, v in self.state.items() if _is_extra(k)}
    if extras:
        _write(out / EXTRAS_FILE, save(extras))
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
    _write(out / CARD_FILE, model_card(self, rank, alpha, LORA_FILE, LRRB_FILE, metrics).encode())
    _write(out / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=False).encode())
    for sub in [*(out / s for s in sets), out]:
        _fsync(sub)


def _write(path: Path, data: bytes) -> None:
    """A new file (``O_EXCL``: in the fresh folder nothing may be there already), flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, folder: Path) -> None:
    """Rename the complete export ``new`` into ``folder``'s place; the previous folder survives any failure."""
    if not os.path.lexists(folder):
        os.rename(new, folder)
        return
    # A fresh name (a folder cannot be renamed onto a placeholder a symlink is renamed onto); fails:
    # nothing moved.
    old = folder.parent / f".{folder.name}.{secrets.token_hex(4)}{_OLD}"
    os.rename(folder, old)
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    if old.is_symlink():  # the folder was a symlink: replaced, its target untouched
        old.unlink()
        return
    for entry in old.iterdir():  # what the user kept beside the previous export
        if not os.path.lexists(folder / entry.name) and not _is_temp_name(entry.name):
            os.rename(entry, folder / entry.name)
    shutil.rmtree(old)


def _is_temp_name(name: str) -> bool:
    """Temporary files of earlier writers (``.<file>.part``, ``.<file>.<random>.part``)."""
    return name.startswith(".") and name.endswith(".part")


def clean_stale_exports(folder: Path) -> None:
    """Remove the sibling folders that a killed export of ``folder`` left (only these names,
    ``.<folder name>.<random>.export-new`` / ``.export-old``); a previous export left renamed away while
    ``folder`` itself is missing is put back (a real folder only). A symlink with such a name is removed,
    never followed."""
    folder = Path(folder)
    parent = folder.parent
    if not parent.is_dir():
        return
    # Exactly the names mkdtemp and _swap_in give (8 random characters): not another folder's.
    ours = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}({re.escape(_NEW)}|{re.escape(_OLD)})")
    stale = [p for p in parent.iterdir() if ours.fullmatch(p.name)]
    for path in sorted(stale, key=lambda p: p.name.endswith(_NEW)):  # .export-old first: it may be restored
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        elif path.name.endswith(_OLD) and not os.path.lexists(folder) and any(path.iterdir()):
            os.rename(path, folder)
            log.warning(
                "%s: restored the previous export that an interrupted export left in %s", folder, path.name
            )
        else:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)


def _diffusers_lora(
    self: Exportable, lora_set: str | None = None
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
        m = ADAPTER_KEY.match(key[len("unet.") :])
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
