"""The model card (``README.md``) of an exported folder: Hugging Face's YAML front matter + Markdown."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class Exportable(Protocol):
    """What the card and the writer (:mod:`fidesr.modelio.write`) read of the
    :class:`~fidesr.modelio.read.TrainedWeights` they are given (the reader imports the writer, so neither
    imports the reader, not even for annotations)."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    source: str
    info: dict[str, Any]

    @property
    def base_model(self) -> str: ...


def model_card(
    weights: Exportable,
    rank: int,
    alpha: float,
    lora_file: str,
    lrrb_file: str,
    metrics: Mapping[str, float] | None = None,
) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for an exported folder."""
    base = weights.base_model
    cfg = weights.config
    lfim = cfg.get("lfim") or {}
    lines = [
        "---",
        "library_name: diffusers",
        *([f"base_model: {base}"] if "/" in base and not Path(base).exists() else []),
        "license: openrail++",
        "tags: [super-resolution, image-to-image, lora, fidesr, one-step-diffusion]",
        "---",
        "",
        "# FiDeSR one-step super-resolution (LoRA + LRRB)",
        "",
        f"Trained with fidesr (FiDeSR, CVPR 2026) from `{Path(weights.source).name}`"
        + (f" at step {weights.info['global_step']}" if weights.info.get("global_step") is not None else "")
        + ".",
        "",
        f"- base model: `{base}` (its licence applies: CreativeML Open RAIL++-M for SD 2.1-base)",
        f"- UNet LoRA: rank {rank}, alpha {alpha:g}, in `{lora_file}` (diffusers/PEFT format)",
        f"- LRRB: {'`' + lrrb_file + '`' if cfg.get('lrrb') else 'none'}",
        f"- LFIM defaults: lf_scale {lfim.get('lf_scale', 'n/a')}, hf_scale {lfim.get('hf_scale', 'n/a')}"
        if lfim
        else "- LFIM: off",
        "",
        "## Use",
        "",
        "```bash",
        "fidesr-upscale INPUT -o OUT --checkpoint THIS_FOLDER_OR_REPO_ID",
        "```",
        "",
        "The LoRA alone loads in plain diffusers (`pipe.load_lora_weights(folder)`), but the SR model is",
        "one UNet step at t = 1 on the LQ latent followed by the LRRB and LFIM: use fidesr for its outputs.",
    ]
    if metrics:
        lines += ["", "## Validation metrics", "", "| metric | value |", "|---|--:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items()]
    run = weights.info.get("run_config") or {}
    if run:
        keep = {
            k: run.get(k)
            for k in ("seed", "trainer", "data", "daw", "distill", "stages", "lrrb", "perceptual")
            if k in run
        }
        lines += [
            "",
            "## Training config (excerpt)",
            "",
            "```json",
            json.dumps(keep, indent=1, default=str)[:4000],
            "```",
        ]
    return "\n".join(lines) + "\n"
