"""Write a config-only SD 2.1-base diffusers folder (no weights), for ``fidesr-memory`` without the hub.

``fidesr-memory`` builds the backbone from the folder's config files alone (``weights=False``, meta
device). The UNet / VAE / text-encoder configs are the SD 2.1-base ones that experiments/bench/inference.py
already spells out (one copy); the tokenizer is fidesr's tiny character-level CLIP tokenizer (prompt length
77 as CLIP's, which is all the memory depends on) and the scheduler SD 2.1's DDPM schedule.

    python experiments/baselines/sd21_config_folder.py /tmp/sd21-config
    fidesr-memory "experiment=[fidesr_sd21,osediff_like]" backbone.pretrained=/tmp/sd21-config data.batch_size=8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from inference import SD21_TEXT, SD21_UNET, SD21_VAE  # noqa: E402

from fidesr.backbone.tiny import SD21_SCHEDULE, build_tiny_tokenizer  # noqa: E402


def write_folder(folder: Path) -> Path:
    """The folder with unet/ vae/ text_encoder/ (config.json), tokenizer/ and scheduler/."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    tokenizer = build_tiny_tokenizer(folder / "tokenizer")
    tokenizer.save_pretrained(folder / "tokenizer")
    for sub, cls, spec in (("unet", UNet2DConditionModel, SD21_UNET), ("vae", AutoencoderKL, SD21_VAE)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        config = dict(spec)
        config["_class_name"] = cls.__name__
        (folder / sub / "config.json").write_text(
            json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, indent=1)
        )
    CLIPTextConfig(
        vocab_size=49408,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
        **SD21_TEXT,
    ).save_pretrained(folder / "text_encoder")
    DDPMScheduler(**SD21_SCHEDULE).save_config(folder / "scheduler")
    return folder


if __name__ == "__main__":
    print(write_folder(Path(sys.argv[1] if len(sys.argv) > 1 else "sd21-config")))
