"""Trained FiDeSR weights in: one reader for every source, and the model built from them.

Sources :meth:`TrainedWeights.load` reads (``FiDeSRPipeline.from_pretrained``, the one loader that
``fidesr-upscale``, ``fidesr-eval``, ``fidesr-app`` and ``fidesr-benchmark`` call, comes here):

* a training checkpoint (``fidesr-train``'s ``*.ckpt``),
* an exported folder (:meth:`TrainedWeights.save_pretrained`, ``fidesr-export``; the layout in
  :mod:`fidesr.modelio.layout`),
* the official ``.pkl`` of FiDeSR (``unet_lora_{encoder,decoder,others}_modules``, ``lora_rank_unet``,
  ``state_dict_unet``, ``lrrb_state_dict``), OSEDiff and PiSA-SR (:mod:`fidesr.modelio.layouts`),
* a Hugging Face Hub repo id holding an exported folder (into the HF cache), or an earlier fidesr
  version's single-file adapter (``.safetensors`` with a ``fidesr`` header).

Every source is read as data (:mod:`fidesr.trust`): pickles ``weights_only``, else safetensors or JSON.
The writer of the exported folder is :mod:`fidesr.modelio.write` (:meth:`TrainedWeights.save_pretrained`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fidesr.backbone.lora import FAKE_SCORE_ADAPTER
from fidesr.errors import MissingInputError, ModelFileError
from fidesr.modelio.layout import (
    CONFIG_FILE,
    CONFIG_SECTIONS,
    EMA_KEY,
    EXTRAS_FILE,
    FOLDER_FORMAT,
    FOLDER_VERSION_SETS,
    LEGACY_ADAPTER_FORMAT,
    LORA_FILE,
    LRRB_FILE,
    MODEL_KEYS,
    OFFICIAL_KEYS,
    OFFICIAL_LORA_ALPHA,
)
from fidesr.modelio.layouts import (
    ReleasedWeights,
    check_names,
    load_full_weights,
    read_official,
    read_released,
)
from fidesr.modelio.released import fetch_hub_folder, is_repo_id
from fidesr.modelio.write import write_folder
from fidesr.trust import (
    LOCATION_ARGS,
    as_mapping,
    check_finite,
    check_stored_config,
    check_version,
    file_in_folder,
    load_torch_file,
    module_names,
    short_repr,
)

# Backbone settings that carry over when ``pretrained`` replaces a preset without such a key (tiny).
_LORA_KEYS = (
    "lora_rank",
    "lora_alpha",
    "lora_init",
    "lora_targets",
    "timestep",
    "prediction",
    "lora_sets",
    "vae_lora_rank",
)


@dataclass
class TrainedWeights:
    """What a trained FiDeSR model adds to SD 2.1-base, and the config to rebuild the model around it.

    Attributes:
        config: sections ``backbone`` (a Hydra node), ``lrrb`` and ``lfim`` (nodes or None), ``model``
            (``color_fix``, ``min_lq_size``); checked against the allow-list when read.
        state: ``unet.<name in the peft-wrapped unet.state_dict()>`` LoRA tensors (adapter names included),
            ``lrrb.<name>`` tensors and, for OSEDiff's VAE-encoder LoRA, ``vae.<name>`` tensors.
        source: where it came from (named in messages and the model card).
        lora_split: explicit module lists per adapter (official files, exported folders), or None: the
            backbone's own LoRA set-up from ``config["backbone"]`` applies.
        info: extras for the model card (training step, metrics, the full run config).
    """

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    source: str
    lora_split: dict[str, list[str]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A stored location (the tiny preset's cache_dir) is never used, nor written on export: the
        # user's own applies (fidesr.trust.LOCATION_ARGS).
        bb = self.config.get("backbone") if isinstance(self.config, Mapping) else None
        if isinstance(bb, Mapping) and LOCATION_ARGS & bb.keys():
            backbone = {k: v for k, v in bb.items() if k not in LOCATION_ARGS}
            self.config = {**self.config, "backbone": backbone}

    # ------------------------------------------------------------------ readers
    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        *,
        pretrained: str | os.PathLike | None = None,
        revision: str | None = None,
        unsafe_pickle: bool = False,
    ) -> TrainedWeights:
        """Read any supported source (see the module doc), deciding by what it is.

        Args:
            source: a file, a folder, or a Hub repo id (``user/name``).
            pretrained: base SD for an official ``.pkl`` (default: the SD 2.1-base hub id).
            revision: Hub revision (branch, tag or commit) for a repo id.
            unsafe_pickle: let a ``.ckpt``/``.pkl`` be fully unpickled (only for files you trust).
        """
        path = Path(source).expanduser()
        if path.is_dir():
            return cls.from_folder(path)
        if path.is_file():
            if path.suffix == ".safetensors":
                return cls.from_adapter_file(path)
            data = load_torch_file(path, "model file", unsafe_pickle=unsafe_pickle)
            released = read_released(data, path, pretrained)  # OSEDiff's and PiSA-SR's released files
            if released is not None:
                return cls._from_released(released, path)
            if isinstance(data, dict) and all(k in data for k in OFFICIAL_KEYS):
                return cls._from_released(read_official(data, path, pretrained), path)
            return cls._from_checkpoint_dict(data, path)
        if is_repo_id(str(source)):
            return cls.from_hub(str(source), revision=revision)
        raise MissingInputError(
            f"model not found: {source} (no such file or folder, and not a Hub repo id user/name)"
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, unsafe_pickle: bool = False) -> TrainedWeights:
        """A ``fidesr-train`` checkpoint: LoRA + LRRB tensors and the resolved run config."""
        path = Path(path)
        return cls._from_checkpoint_dict(load_torch_file(path, "training checkpoint", unsafe_pickle), path)

    @classmethod
    def _from_checkpoint_dict(cls, ckpt: Any, path: Path) -> TrainedWeights:
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ModelFileError(
                f"{path} is neither a fidesr-train checkpoint (no state_dict) nor an official FiDeSR file"
            )
        run_config = as_mapping(ckpt.get("fidesr"), path, "checkpoint['fidesr']").get("config")
        if not run_config:
            raise ModelFileError(
                f"{path} has no fidesr config (checkpoint['fidesr']['config']): it was not written by fidesr-train"
            )
        run_config = as_mapping(run_config, path, "checkpoint['fidesr']['config']")
        config = {k: run_config.get(k) for k in CONFIG_SECTIONS}
        model = as_mapping(run_config.get("model"), path, "the stored config's model")
        config["model"] = {k: model.get(k) for k in MODEL_KEYS}
        if not config["backbone"]:
            raise ModelFileError(f"{path}: the stored config has no backbone section")
        check_stored_config(config, path)
        state = _trained_tensors(as_mapping(ckpt["state_dict"], path, "checkpoint['state_dict']"))
        averaged = ckpt.get(EMA_KEY)
        if averaged is not None:  # the EMA of the weights (ema=on): what the run validated, and better
            where = f"checkpoint['{EMA_KEY}']['state_dict']"
            node = as_mapping(averaged, path, f"checkpoint['{EMA_KEY}']")
            ema = _trained_tensors(as_mapping(node.get("state_dict"), path, where))
            unknown = sorted(set(ema) - set(state))
            if unknown:
                raise ModelFileError(f"{path}: {where} has tensors the model lacks (e.g. {unknown[:2]})")
            state = {**state, **ema}  # buffers (not averaged) stay the raw ones
        check_finite(state, path)
        if not any(k.startswith("unet.") for k in state):
            raise ModelFileError(f"{path} holds no LoRA tensors (backbone.unet.*lora_*)")
        info = {"global_step": ckpt.get("global_step"), "run_config": run_config, "ema": averaged is not None}
        return cls(config, state, str(path), info=info)

    @classmethod
    def from_official(
        cls, path: str | os.PathLike, pretrained: str | os.PathLike | None = None, unsafe_pickle: bool = False
    ) -> TrainedWeights:
        """The released FiDeSR ``.pkl`` (LoRA module lists, rank, LoRA and LRRB tensors); ``pretrained``:
        the base SD 2.1-base (hub id or folder; default the hub id)."""
        path = Path(path)
        data = load_torch_file(path, "official FiDeSR checkpoint", unsafe_pickle)
        return cls._from_released(read_official(data, path, pretrained), path)

    @classmethod
    def _from_released(cls, released: ReleasedWeights, path: Path) -> TrainedWeights:
        return cls(
            released.config, released.state, str(path), lora_split=released.lora_split, info=released.info
        )

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, root: str | os.PathLike | None = None) -> TrainedWeights:
        """A folder written by :meth:`save_pretrained` (or downloaded from the Hub). Every file it names
        must be inside it, symlinks followed, or inside ``root`` (default: for a Hub cache snapshot,
        ``models--user--name/snapshots/<rev>``, the repository folder, whose ``blobs/`` it links to)."""
        folder = Path(folder)
        if root is None and folder.resolve().parent.name == "snapshots":
            root = folder.resolve().parents[1]
        inside = Path(root) if root is not None else None
        meta_path = folder / CONFIG_FILE
        if not meta_path.is_file():
            raise ModelFileError(
                f"{folder} is not an exported fidesr model: no {CONFIG_FILE} (write one with fidesr-export)"
            )
        try:
            meta = json.loads(file_in_folder(folder, CONFIG_FILE, str(folder), inside).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFileError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FOLDER_FORMAT:
            raise ModelFileError(
                f"{meta_path} is not a fidesr model config (format {meta.get('format')!r})"
                if isinstance(meta, dict)
                else f"{meta_path} is not a fidesr model config"
            )
        check_version(meta.get("version", 0), meta_path, FOLDER_VERSION_SETS)
        config = as_mapping(meta.get("config"), meta_path, "config")
        check_stored_config(config, meta_path)
        if not config.get("backbone"):
            raise ModelFileError(f"{meta_path}: the config has no backbone section")
        lora = as_mapping(meta.get("lora"), meta_path, "lora")
        adapters = as_mapping(lora.get("adapters"), meta_path, "lora.adapters")
        split = {str(a): module_names(mods, meta_path, f"lora.adapters.{a}") for a, mods in adapters.items()}
        weights = lora.get("weights") or LORA_FILE  # a file name, or one per LoRA set
        files = {"": weights} if isinstance(weights, str) else as_mapping(weights, meta_path, "lora.weights")
        state: dict[str, torch.Tensor] = {}
        for lora_set, name in files.items():  # one file, or one per LoRA set ("pix", "sem")
            where = f"{meta_path}: lora.weights" + (f".{lora_set}" if lora_set else "")
            path = file_in_folder(folder, name, where, inside)
            owner = {
                m: a for a, mods in split.items() if not lora_set or a.endswith(f"_{lora_set}") for m in mods
            }
            for key, value in _read_safetensors(path).items():
                m = re.match(r"^unet\.(?P<module>.+)\.(?P<part>lora_[AB])\.weight$", key)
                if m is None or m["module"] not in owner:
                    raise ModelFileError(
                        f"{folder / name}: tensor {key!r} belongs to no adapter listed in {CONFIG_FILE}"
                    )
                state[f"unet.{m['module']}.{m['part']}.{owner[m['module']]}.weight"] = value
        if config.get("lrrb"):
            lrrb_path = file_in_folder(folder, LRRB_FILE, str(folder), inside)
            state.update({f"lrrb.{k}": v for k, v in _read_safetensors(lrrb_path).items()})
        if meta.get("extras"):  # fidesr's own names ("vae.<...lora...>", "unet.conv_in.base_layer.weight")
            extras_path = file_in_folder(folder, EXTRAS_FILE, str(folder), inside)
            state.update(_read_safetensors(extras_path))
        info = {k: meta[k] for k in ("training", "source") if isinstance(meta.get(k), Mapping)}
        return cls(config, state, str(folder), lora_split=split or None, info=info)

    @classmethod
    def from_hub(cls, repo_id: str, revision: str | None = None) -> TrainedWeights:
        """An exported folder on the Hugging Face Hub, fetched into (or, offline, found in) the HF cache.
        Only the folder's JSON, safetensors and model card are fetched: nothing that can hold code."""
        return cls.from_folder(fetch_hub_folder(repo_id, revision=revision))

    @classmethod
    def from_adapter_file(cls, path: str | os.PathLike) -> TrainedWeights:
        """The single ``.safetensors`` adapter of fidesr 0.1 (config as JSON in the header). Still read;
        no longer written: diffusers cannot read its key names, see :meth:`save_pretrained`."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
        except Exception as err:  # safetensors raises its own error types
            raise ModelFileError(f"{path} is not a safetensors file: {err}") from err
        try:
            header = json.loads(meta["fidesr"])
        except (KeyError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{path} has no fidesr metadata: not a fidesr adapter file") from err
        header = as_mapping(header, path, "the fidesr metadata")
        if header.get("format") != LEGACY_ADAPTER_FORMAT:
            raise ModelFileError(f"{path}: unsupported adapter format {short_repr(header.get('format'))}")
        check_version(header.get("version", 0), path, 1)
        config = as_mapping(header.get("config"), path, "config")
        check_stored_config(config, path)
        source = header.get("source")
        info = {"source": source if isinstance(source, Mapping) else {}}
        return cls(config, _read_safetensors(path), str(path), info=info)

    # ------------------------------------------------------------------ writer
    def save_pretrained(
        self, folder: str | os.PathLike, overwrite: bool = False, metrics: Mapping[str, float] | None = None
    ) -> Path:
        """Write the exported folder (:mod:`fidesr.modelio.layout`; :func:`fidesr.modelio.write.write_folder`):
        LoRA in diffusers' format via diffusers' own ``save_lora_weights``, the LRRB as safetensors,
        ``config.json`` and a model card, all written into a temporary folder renamed into place.
        ``overwrite=False`` refuses a folder that already holds an export."""
        return write_folder(self, folder, overwrite=overwrite, metrics=metrics)

    @property
    def base_model(self) -> str:
        """The base SD model id or folder the backbone section names (``"tiny"`` for the tiny preset)."""
        bb = self.config.get("backbone") or {}
        return str(bb.get("pretrained") or ("tiny" if "tiny" in str(bb.get("_target_")) else "unknown"))

    # ------------------------------------------------------------------ model
    def build(self, pretrained: str | os.PathLike | None = None):
        """(backbone, lrrb or None, lfim or None) with the trained weights loaded, LoRA unmerged.

        The backbone is built in float32 without gradient checkpointing. ``pretrained`` replaces the base
        SD location; for presets without one (``tiny``) it loads that folder through
        ``StableDiffusionBackbone.from_pretrained`` with the same LoRA set-up.
        """
        from hydra.utils import instantiate

        check_stored_config(self.config, self.source)  # also when built from a hand-made instance
        check_finite(self.state, self.source)
        cfg = dict(self.config["backbone"])
        cfg.update(gradient_checkpointing=False, frozen_dtype=None)
        if pretrained is not None:
            if "pretrained" in cfg:
                cfg["pretrained"] = str(pretrained)
            else:
                keep = {k: cfg[k] for k in _LORA_KEYS if k in cfg}
                cfg = {
                    "_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
                    "pretrained": str(pretrained),
                    **keep,
                }
        if self.lora_split:
            cfg["lora_rank"] = 0
        backbone = instantiate(cfg, _convert_="all")
        if self.lora_split:
            alpha = float(self.config["backbone"].get("lora_alpha", OFFICIAL_LORA_ALPHA))
            try:
                backbone.add_named_adapters(self.lora_split, int(self.config["backbone"]["lora_rank"]), alpha)
            except (KeyError, ValueError) as err:  # peft: a listed module the UNet does not have
                raise ModelFileError(
                    f"{self.source}: the LoRA modules it lists do not fit the UNet: {err}"
                ) from err
        lrrb = instantiate(dict(self.config["lrrb"]), _convert_="all") if self.config.get("lrrb") else None
        lfim = instantiate(dict(self.config["lfim"]), _convert_="all") if self.config.get("lfim") else None
        unet_state = {k[len("unet.") :]: v for k, v in self.state.items() if k.startswith("unet.")}
        lrrb_state = {k[len("lrrb.") :]: v for k, v in self.state.items() if k.startswith("lrrb.")}
        vae_state = {k[len("vae.") :]: v for k, v in self.state.items() if k.startswith("vae.")}
        other = sorted(k for k in self.state if not k.startswith(("unet.", "lrrb.", "vae.")))
        if other:
            raise ModelFileError(f"{self.source}: unexpected tensors {other[:3]}")
        if lrrb is None and lrrb_state:
            raise ModelFileError(f"{self.source}: LRRB tensors present but the config has lrrb: null")
        if self.info.get("full_weights"):  # a merged released file (OSEDiff from AdcSR's Hub repo)
            load_full_weights(backbone, unet_state, vae_state, self.source)
        else:
            try:
                backbone.load_lora_state_dict(unet_state, source=f"the weights of {self.source}")
            except KeyError as err:
                raise ModelFileError(str(err.args[0])) from err
            if vae_state or backbone.vae_lora_modules:  # OSEDiff's VAE-encoder LoRA
                check_names(backbone.vae_lora_state_dict(), vae_state, f"{self.source}: the VAE-encoder LoRA")
                backbone.load_vae_lora_state_dict(vae_state, source=f"the weights of {self.source}")
        if lrrb is not None:
            try:
                lrrb.load_state_dict(lrrb_state, strict=True)
            except RuntimeError as err:
                raise ModelFileError(
                    f"{self.source}: the LRRB weights do not fit the configured LRRB: {err}"
                ) from err
        return backbone, lrrb, lfim


def _trained_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LightningModule state dict -> ``unet.*`` (LoRA) and ``lrrb.*`` tensors.

    Checkpoints key LoRA as ``backbone.unet.<...lora_...>`` (the VSD fake-score adapter left out); ``backbone.<...lora_...>`` without ``unet.`` is
    read as well (the names ``StableDiffusionBackbone.lora_state_dict`` returns).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("lrrb."):
            out[key] = value
        elif key.startswith("backbone.") and "lora_" in key and f".{FAKE_SCORE_ADAPTER}." not in key:
            # (the VSD fake-score adapter is training state, not part of the model)
            rest = key[len("backbone.") :]
            out[rest if rest.startswith(("unet.", "vae.")) else f"unet.{rest}"] = value
    return out


def trained_state(backbone, lrrb: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The tensors :class:`TrainedWeights` holds, from live modules: ``unet.*`` LoRA and ``lrrb.*``."""
    state = {f"unet.{k}": v for k, v in backbone.lora_state_dict().items()}
    if lrrb is not None:
        state.update({f"lrrb.{k}": v for k, v in lrrb.state_dict().items()})
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"missing {path.name} in {path.parent}")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{path} is not a readable safetensors file: {err}") from err
    check_finite(tensors, path)
    return tensors
