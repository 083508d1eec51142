"""``fidesr-memory``: will this training configuration fit my GPU? Answered without a GPU and without weights.

Takes the same Hydra overrides as ``fidesr-train``, builds the model from the SD config files alone (on the
meta device: no weights read), and estimates the peak GPU memory of one optimizer step at the configured
batch size and crop (:mod:`fidesr.memory`; within 0.3 % of an H200 measurement for the paper configuration).

    fidesr-memory experiment=fidesr_sd21 backbone.pretrained=/models/sd21-base
    fidesr-memory experiment=fidesr_sd21 memory=24gib data.batch_size=8 --gpu-gib 24
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import open_dict

from fidesr.memory import estimate_training_step, training_batch

#: Lightning precision -> the autocast dtype of the training step (None: no autocast).
PRECISIONS = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "32-true": None, "32": None}
FROM_PRETRAINED = "fidesr.backbone.StableDiffusionBackbone.from_pretrained"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fidesr-memory",
        description="Estimate the peak GPU memory of a training step of a fidesr-train configuration.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fidesr-train")
    parser.add_argument("--gpu-gib", type=float, default=None, help="say whether it fits a card of this size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    return parser


def estimate_config(overrides: list[str]):
    """Compose the training config and estimate its step: ``(config, MemoryEstimate)``."""
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        # Nothing is written; a fixed output dir only spares resolving the run-time timestamp.
        own_dir = any(o.startswith("paths.output_dir=") for o in overrides)
        cfg = compose(
            "train", overrides=[*overrides, *([] if own_dir else ["paths.output_dir=/tmp/fidesr-memory"])]
        )
    if cfg.backbone._target_ != FROM_PRETRAINED:
        raise ValueError(
            f"fidesr-memory builds SD backbones from their config files (backbone=sd21, any hub id or folder); "
            f"backbone._target_ is {cfg.backbone._target_}"
        )
    precision = str(cfg.trainer.precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision}: fidesr-memory knows {sorted(PRECISIONS)}")
    with open_dict(cfg):
        cfg.backbone.weights = False  # architecture from config.json files only
        if cfg.get("perceptual") is not None and cfg.perceptual.get("backbone") == "pretrained":
            cfg.perceptual.backbone = "random"  # the same VGG16 network; its ImageNet weights are not needed
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on frozen_dtype casts
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "copying ... to a meta parameter is a no-op": shapes are all we need
        model = instantiate(cfg.model)
    batch = functools.partial(training_batch, int(cfg.data.batch_size), int(cfg.data.crop_size))
    return cfg, estimate_training_step(model, batch, PRECISIONS[precision])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, est = estimate_config(args.overrides)
    except Exception as err:  # noqa: BLE001 - one clear line for config, folder and hub errors
        print(f"fidesr-memory: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    verdict = None
    if args.gpu_gib is not None:  # 2 GiB for what the estimate leaves out (workspaces, fragmentation)
        room = args.gpu_gib - est.peak_gib
        verdict = "fits" if room >= 2 else ("tight" if room >= 0 else "does not fit")
    row = {
        "batch_size": int(cfg.data.batch_size),
        "crop_size": int(cfg.data.crop_size),
        "precision": str(cfg.trainer.precision),
        "frozen_dtype": cfg.backbone.get("frozen_dtype"),
        "gradient_checkpointing": bool(cfg.backbone.get("gradient_checkpointing")),
        "loss_chunk": cfg.model.get("loss_chunk"),
        "estimated_peak_gib": round(est.peak_gib, 3),
        "peak_during": est.peak_during,
        "live_at_peak_gib": est.breakdown_gib(),
        "gpu_gib": args.gpu_gib,
        "verdict": verdict,
    }
    if args.json:
        print(json.dumps(row))
        return 0
    print(
        f"training step, batch {row['batch_size']} x {row['crop_size']} px, precision {row['precision']}, "
        f"frozen weights {row['frozen_dtype'] or 'float32'}, UNet checkpointing {row['gradient_checkpointing']}, "
        f"loss_chunk {row['loss_chunk']}"
    )
    print(
        f"estimated peak GPU memory: {est.peak_gib:.2f} GiB (torch.cuda.max_memory_allocated; add cuDNN "
        "workspaces and fragmentation, typically 1-2 GiB)"
    )
    print("alive at the peak: " + ", ".join(f"{k} {v:.2f}" for k, v in est.breakdown_gib(2).items()))
    if verdict is not None:
        print(
            f"{args.gpu_gib:g} GiB card: {verdict} ({args.gpu_gib - est.peak_gib:+.1f} GiB)"
            + (
                ""
                if verdict == "fits"
                else "; try memory=24gib or memory=16gib, or a smaller data.batch_size"
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
