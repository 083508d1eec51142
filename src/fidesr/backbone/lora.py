"""LoRA on the SD UNet, split into the three named adapters of OSEDiff / PiSA-SR / FiDeSR.

The official code selects every UNet *weight* (not bias, not norm) whose name contains one of the target
patterns and files it under one of three adapters by where it sits: ``default_encoder`` (``down_blocks`` or
``conv_in``), ``default_decoder`` (``up_blocks`` or ``conv_out``) and ``default_others`` (mid block,
etc.). Plain substring matching is intentional: ``conv`` also catches down/upsampler convs, while the time
embedding linears and ``time_emb_proj`` match nothing and stay untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig

ADAPTER_NAMES = ("default_encoder", "default_decoder", "default_others")
#: PiSA-SR's two LoRA sets (pixel-level, semantic-level): adapter names ``<base>_pix`` / ``<base>_sem``
#: (``default_encoder_pix``, ...), as in its ``pisasr.py``.
LORA_SETS = ("pix", "sem")
#: The VSD fake-score adapter (OSEDiff's "unet_update" LoRA) on the same UNet: training only, never exported.
FAKE_SCORE_ADAPTER = "fake_score"

LORA_TARGETS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv_out",
    "proj_out",
    "proj_in",
    "ff.net.2",
    "ff.net.0.proj",
)


def split_lora_targets(unet: torch.nn.Module, patterns: Sequence[str] = LORA_TARGETS) -> dict[str, list[str]]:
    """Module names to wrap with LoRA, per adapter, exactly as the official selection does.

    Returns:
        ``{"default_encoder": [...], "default_decoder": [...], "default_others": [...]}`` of module names
        (parameter name without ``.weight``), each module in exactly one list.
    """
    split: dict[str, list[str]] = {name: [] for name in ADAPTER_NAMES}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not name.endswith(".weight"):
            continue
        if not any(pattern in name for pattern in patterns):
            continue
        module = name[: -len(".weight")]
        if "down_blocks" in name or "conv_in" in name:
            split["default_encoder"].append(module)
        elif "up_blocks" in name or "conv_out" in name:
            split["default_decoder"].append(module)
        else:
            split["default_others"].append(module)
    return split


#: OSEDiff's VAE-encoder LoRA (its ``osediff.py``): every encoder conv, the encoder's mid-block attention
#: projections, and ``quant_conv`` (not ``post_quant_conv``, which belongs to the frozen decoder side).
VAE_ENCODER_LORA_TARGETS = (
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv",
    "conv_out",
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
)
VAE_ADAPTER = "default_encoder"


def vae_encoder_lora_targets(vae: torch.nn.Module) -> list[str]:
    """Module names of the VAE that OSEDiff's encoder LoRA wraps (weights of ``encoder.*`` modules whose
    last name part is one of :data:`VAE_ENCODER_LORA_TARGETS`, and ``quant_conv``)."""
    out = []
    for name, _ in vae.named_parameters():
        if not name.endswith(".weight") or "norm" in name:
            continue
        module = name[: -len(".weight")]
        if module == "quant_conv" or (
            module.startswith("encoder.") and any(module.endswith(f".{t}") for t in VAE_ENCODER_LORA_TARGETS)
        ):
            out.append(module)
    return out


def add_lora_adapters(
    unet: torch.nn.Module,
    rank: int = 8,
    alpha: float = 8.0,
    init: str | bool = "gaussian",
    patterns: Sequence[str] = LORA_TARGETS,
    sets: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Add the three adapters to a diffusers UNet (PEFT integration) and activate all of them.

    ``alpha`` is explicit: peft's default equals the rank, i.e. a LoRA scale of 1, which is what the
    official code trains with. ``sets`` (e.g. :data:`LORA_SETS`): one such triple per set on the same
    modules, named ``<adapter>_<set>`` (PiSA-SR's pixel and semantic LoRA), in set order.

    Returns:
        ``{adapter name: module names}`` (the split of :func:`split_lora_targets`, once per set).
    """
    base = split_lora_targets(unet, patterns)
    split = base if not sets else {f"{a}_{s}": list(m) for s in sets for a, m in base.items()}
    for adapter, targets in split.items():
        if not targets:
            raise ValueError(f"LoRA adapter {adapter!r} matches no UNet module for patterns {list(patterns)}")
        add_adapter(unet, adapter, targets, rank, alpha, init)
    unet.set_adapters(list(split))
    return split


def add_adapter(
    unet: torch.nn.Module,
    name: str,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    init: str | bool = "gaussian",
) -> None:
    """One peft LoRA adapter ``name`` on the modules ``targets`` of a diffusers UNet (not activated)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=list(targets))
    with warnings.catch_warnings():
        # Several adapters on one model is the point here, not an accident peft should warn about.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=name)
