"""The released FiDeSR, OSEDiff and PiSA-SR files, read as data and mapped strictly onto fidesr's backbone.

Each reader takes the dict ``torch.load(weights_only=True)`` gave (:func:`fidesr.trust.load_torch_file`) and
returns the :class:`ReleasedWeights` (config, tensors, LoRA split) that
:class:`~fidesr.modelio.read.TrainedWeights` is made of, so that it runs the method's own inference; every
tensor of the file is used and every tensor the file's module lists imply must be there, else one
:class:`~fidesr.errors.ModelFileError` lists the first few missing and unexpected names. The layouts and
the official file and line of each key: docs/released.md.

* **FiDeSR** (the official ``fidesr.pkl``): the UNet LoRA module lists per adapter, ``lora_rank_unet``,
  ``state_dict_unet`` and ``lrrb_state_dict`` (the LRRB in the official layout).
* **OSEDiff** (``OSEDiff_gen.save_model``, cswry/OSEDiff ``osediff.py`` 131-140): UNet LoRA module lists
  per adapter, ``rank_unet``, VAE-encoder LoRA module list, ``rank_vae``, ``state_dict_unet`` (LoRA tensors
  and the trained ``conv_in``), ``state_dict_vae`` (VAE LoRA). Run at t = 999 with the x0 update, as
  ``OSEDiff_test`` (``osediff.py`` 245-301, 406).
* **OSEDiff, merged** (what ``Guaishou74851/AdcSR`` ships as ``weight/pretrained/osediff.pkl``, read by its
  ``train.py`` 71-73): ``{"unet": <full UNet state dict>, "vae": <full VAE state dict>}``, the LoRA merged
  into the weights; loaded as full weights, strictly.
* **PiSA-SR** (``PiSASR.save_model``, csslc/PiSA-SR ``pisasr.py`` 296-305): the module lists and ranks with
  ``_pix`` / ``_sem`` suffixes, one ``state_dict_unet`` with all six adapters' LoRA tensors; both sets active
  (lambda_pix = lambda_sem = 1, ``pisasr.py`` 410-445 and 507-518).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fidesr.backbone.sd import DEFAULT_PRETRAINED
from fidesr.components.lrrb import LatentResidualRefinementBlock
from fidesr.errors import ModelFileError
from fidesr.modelio.layout import OFFICIAL_KEYS, OFFICIAL_LORA_ALPHA
from fidesr.trust import as_mapping, check_finite, check_stored_config, module_names

OSEDIFF_KEYS = (
    "unet_lora_encoder_modules",
    "unet_lora_decoder_modules",
    "unet_lora_others_modules",
    "vae_lora_encoder_modules",
    "rank_unet",
    "rank_vae",
    "state_dict_unet",
    "state_dict_vae",
)
_PARTS = ("encoder", "decoder", "others")
PISASR_SETS = ("pix", "sem")
PISASR_KEYS = (
    *(f"unet_lora_{p}_modules_{s}" for s in PISASR_SETS for p in _PARTS),
    "lora_rank_unet_pix",
    "lora_rank_unet_sem",
    "state_dict_unet",
)
MERGED_KEYS = ("unet", "vae")
OSEDIFF_TIMESTEP = 999  # OSEDiff_gen / OSEDiff_test: self.timesteps = [999] (osediff.py 88, 277)
VAE_ADAPTER = "default_encoder"  # OSEDiff's VAE adapter name (osediff.py 34, 297)
#: OSEDiff's test-time prompt is DAPE tags of the LQ (test_osediff.py 28-33, 113); no tagger is installed.
OSEDIFF_PROMPT_NOTE = (
    "empty prompt (OSEDiff's own test prompts are DAPE tags of the LQ image; no DAPE tagger is installed)"
)
SHOWN = 3  # names listed per kind in a mismatch message


@dataclass
class ReleasedWeights:
    """What a released file maps to: the fields of :class:`~fidesr.modelio.read.TrainedWeights` but its
    source (the file)."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    lora_split: dict[str, list[str]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def check_names(expected: Iterable[str], found: Iterable[str], where: str) -> None:
    """Strict mapping: raise one ModelFileError listing the first few missing and unexpected names."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {', '.join(missing[:SHOWN])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:SHOWN])})")
    raise ModelFileError(f"{where}: tensors do not match: " + "; ".join(parts))


def layout_of(data: Any) -> str | None:
    """``"osediff"``, ``"osediff-merged"``, ``"pisasr"`` or None (not one of these layouts). A dict holding
    some but not all of a layout's own keys is an error naming the missing keys."""
    if not isinstance(data, Mapping):
        return None
    keys = set(data)
    for name, required, own in (
        ("osediff", OSEDIFF_KEYS, {"rank_unet", "rank_vae", "vae_lora_encoder_modules", "state_dict_vae"}),
        (
            "pisasr",
            PISASR_KEYS,
            {"lora_rank_unet_pix", "lora_rank_unet_sem", "unet_lora_encoder_modules_pix"},
        ),
    ):
        if keys & own:
            missing = [k for k in required if k not in keys]
            if missing:
                raise ModelFileError(f"looks like a released {name} file but lacks the keys {missing}")
            return name
    if keys == set(MERGED_KEYS) and all(isinstance(data[k], Mapping) for k in MERGED_KEYS):
        return "osediff-merged"
    return None


def read_released(
    data: Any, path: str | os.PathLike, pretrained: str | os.PathLike | None = None
) -> ReleasedWeights | None:
    """The weights of a released OSEDiff / PiSA-SR file, or None when ``data`` is another layout."""
    try:
        layout = layout_of(data)
    except ModelFileError as err:
        raise ModelFileError(f"{path} {err}") from None
    if layout is None:
        return None
    base = str(pretrained or DEFAULT_PRETRAINED)
    reader = {"osediff": _osediff, "osediff-merged": _osediff_merged, "pisasr": _pisasr}[layout]
    return reader(data, Path(path), base)


def read_official(sd: Any, path: Path, pretrained: str | os.PathLike | None = None) -> ReleasedWeights:
    """The released FiDeSR ``.pkl`` (LoRA module lists, rank, LoRA and LRRB tensors); ``pretrained``: the
    base SD 2.1-base (hub id or folder; default the hub id)."""
    missing = [k for k in OFFICIAL_KEYS if k not in sd] if isinstance(sd, dict) else list(OFFICIAL_KEYS)
    if missing:
        raise ModelFileError(f"{path} is not an official FiDeSR checkpoint: missing {missing}")
    parts = {f"default_{part}": f"unet_lora_{part}_modules" for part in _PARTS}
    split = {adapter: module_names(sd[key], path, key) for adapter, key in parts.items()}
    rank = sd["lora_rank_unet"]  # checked with the config below (fidesr.trust.TARGET_ARGS)
    check_finite(as_mapping(sd["state_dict_unet"], path, "state_dict_unet"), path)
    if sd.get("lrrb_state_dict") is not None:
        check_finite(as_mapping(sd["lrrb_state_dict"], path, "lrrb_state_dict"), path)
    config: dict[str, Any] = {
        "backbone": _backbone(str(pretrained or DEFAULT_PRETRAINED), rank),
        "lrrb": None,
        "lfim": {"_target_": "fidesr.components.lfim.LatentFrequencyInjection"},  # the released settings
        "model": {},
    }
    state = {f"unet.{k}": v for k, v in sd["state_dict_unet"].items()}
    if sd.get("lrrb_state_dict") is not None:
        lrrb = LatentResidualRefinementBlock()
        lrrb.load_official_state_dict(sd["lrrb_state_dict"])
        config["lrrb"] = {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock"}
        state.update({f"lrrb.{k}": v for k, v in lrrb.state_dict().items()})
    check_stored_config(config, f"{path} (lora_rank_unet)")
    return ReleasedWeights(config, state, lora_split=split, info={"official": True, "method": "FiDeSR"})


def _modules(data: Mapping[str, Any], key: str, path: Path) -> list[str]:
    value = data[key]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) for m in value):
        raise ModelFileError(f"{path}: {key} is not a list of module names")
    return list(dict.fromkeys(value))  # OSEDiff's VAE grep lists a module once per matching pattern


def _rank(data: Mapping[str, Any], key: str, path: Path) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1024:
        raise ModelFileError(f"{path}: {key} = {value!r} is not a LoRA rank (an integer in 1..1024)")
    return value


def _tensors(data: Mapping[str, Any], key: str, path: Path) -> dict[str, torch.Tensor]:
    value = data[key]
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise ModelFileError(f"{path}: {key} is not a mapping of tensor names to tensors")
    return dict(value)


def lora_tensor_names(split: Mapping[str, Iterable[str]]) -> set[str]:
    """The peft tensor names (``<module>.lora_{A,B}.<adapter>.weight``) that adapters on these modules have."""
    return {f"{m}.lora_{p}.{a}.weight" for a, mods in split.items() for m in mods for p in "AB"}


def _backbone(base: str, rank: int, **extra: Any) -> dict[str, Any]:
    return {
        "_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
        "pretrained": base,
        "lora_rank": rank,
        "lora_alpha": OFFICIAL_LORA_ALPHA,  # peft's default: the official LoraConfigs never set it
        **extra,
    }


def _osediff(data: Mapping[str, Any], path: Path, base: str) -> ReleasedWeights:
    split = {f"default_{p}": _modules(data, f"unet_lora_{p}_modules", path) for p in _PARTS}
    unet = _tensors(data, "state_dict_unet", path)
    vae = _tensors(data, "state_dict_vae", path)
    # save_model keeps every UNet tensor whose name holds "lora" or "conv_in" (osediff.py 138): the LoRA
    # and the fully trained conv_in, which peft wraps (base_layer) when conv_in carries a LoRA adapter.
    conv_in = "conv_in.base_layer" if "conv_in" in split["default_encoder"] else "conv_in"
    check_names(
        lora_tensor_names(split) | {f"{conv_in}.weight", f"{conv_in}.bias"}, unet, f"{path} state_dict_unet"
    )
    vae_modules = _modules(data, "vae_lora_encoder_modules", path)
    check_names(lora_tensor_names({VAE_ADAPTER: vae_modules}), vae, f"{path} state_dict_vae")
    rank = _rank(data, "rank_unet", path)
    extra = {"timestep": OSEDIFF_TIMESTEP, "prediction": "x0", "vae_lora_rank": _rank(data, "rank_vae", path)}
    config = {"backbone": _backbone(base, rank, **extra), "lrrb": None, "lfim": None, "model": {}}
    state = {f"unet.{k}": v for k, v in unet.items()} | {f"vae.{k}": v for k, v in vae.items()}
    info = {"official": True, "method": "OSEDiff", "prompt_note": OSEDIFF_PROMPT_NOTE}
    return ReleasedWeights(config, state, lora_split=split, info=info)


def _osediff_merged(data: Mapping[str, Any], path: Path, base: str) -> ReleasedWeights:
    unet, vae = _tensors(data, "unet", path), _tensors(data, "vae", path)
    extra = {"timestep": OSEDIFF_TIMESTEP, "prediction": "x0"}
    config = {"backbone": _backbone(base, 0, **extra), "lrrb": None, "lfim": None, "model": {}}
    state = {f"unet.{k}": v for k, v in unet.items()} | {f"vae.{k}": v for k, v in vae.items()}
    info = {"official": True, "method": "OSEDiff", "prompt_note": OSEDIFF_PROMPT_NOTE, "full_weights": True}
    return ReleasedWeights(config, state, info=info)


def _pisasr(data: Mapping[str, Any], path: Path, base: str) -> ReleasedWeights:
    split = {
        f"default_{p}_{s}": _modules(data, f"unet_lora_{p}_modules_{s}", path)
        for s in PISASR_SETS
        for p in _PARTS
    }
    unet = _tensors(data, "state_dict_unet", path)
    check_names(lora_tensor_names(split), unet, f"{path} state_dict_unet")
    ranks = {s: _rank(data, f"lora_rank_unet_{s}", path) for s in PISASR_SETS}
    if ranks["pix"] != ranks["sem"]:
        raise ModelFileError(
            f"{path}: lora_rank_unet_pix = {ranks['pix']} and lora_rank_unet_sem = {ranks['sem']} differ; "
            "fidesr's two-set backbone has one rank for both sets"
        )
    config = {"backbone": _backbone(base, ranks["pix"]), "lrrb": None, "lfim": None, "model": {}}
    state = {f"unet.{k}": v for k, v in unet.items()}
    info = {"official": True, "method": "PiSA-SR"}
    return ReleasedWeights(config, state, lora_split=split, info=info)


def load_full_weights(
    backbone, unet_state: Mapping[str, torch.Tensor], vae_state: Mapping[str, torch.Tensor], source: str
) -> None:
    """A merged file's full UNet and VAE weights into a backbone without LoRA, strictly (names and shapes)."""
    for name, module, state in (("unet", backbone.unet, unet_state), ("vae", backbone.vae, vae_state)):
        own = module.state_dict()
        check_names(own, state, f"{source} {name}")
        shapes = sorted(k for k in state if tuple(state[k].shape) != tuple(own[k].shape))
        if shapes:
            raise ModelFileError(
                f"{source} {name}: {len(shapes)} tensors of another shape (first: {', '.join(shapes[:SHOWN])}): "
                "another base model?"
            )
        module.load_state_dict(dict(state), strict=True)
