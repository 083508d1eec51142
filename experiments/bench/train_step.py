"""Training-step speed and memory of FiDeSR on the SD 2.1-base architecture with random weights.

One optimizer step of ``FiDeSRModule.training_step`` (the real loss code): batch 8 at 512 px, LoRA r8 +
LRRB trained, MSE + LPIPS-VGG + DAW + CSD (teacher pass on [z_t, z_t] with negative / tag prompts), AdamW,
gradient clipping 1.0. DAW is active from step 0 (its full cost: detail map, error map, weights).
LPIPS-VGG uses a *random* VGG backbone (``PerceptualLoss(backbone="random")``): the same network and cost
as LPIPS with ImageNet weights, which cannot be downloaded here; it is a stand-in for timing only.

    python experiments/bench/train_step.py [--out results.json]     # one GPU, ~1-2 min
    python experiments/bench/train_step.py --tiny --device cpu      # tiny preset on the CPU (< 1 min)

Configurations (each prints s/step, median over --steps after 2 warm-up steps, and peak allocated memory;
the memory of each is also estimated without a GPU by train_memory.py):
  paper         frozen weights float32, fp16 autocast + GradScaler (the paper's fp16 mixed precision)
  24gib         the `memory=24gib` preset: frozen weights fp16 (the same fp16 convolutions autocast runs),
                fp16 autocast, loss_chunk=1 (decoder + LPIPS one image at a time), no recomputation;
                under a 24 GiB cap (torch.cuda.set_per_process_memory_fraction): batch 8 at 512 px
  16gib         the `memory=16gib` preset: 24gib plus gradient checkpointing in the UNet, under a 16 GiB cap
  paper_chunk1  the paper's precision with loss_chunk=1 (what chunking alone saves)
  bf16          frozen weights bf16, bf16 autocast, no scaler
  bf16_cl       the same with channels_last UNet and VAE
  paper_compiled / 24gib_compiled   paper / 24gib with the VAE decoder and LPIPS torch.compile'd
                (model.compile_parts; the first step includes compilation)
The bench has no Lightning trainer, so the chunks' backward is not loss-scaled here (values are not the
point of a timing run; FiDeSRModule scales them by the trainer's GradScaler in training).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import Bench, build_backbone, cap_memory, random_lrrb, setup_device  # noqa: E402

from fidesr.components.daw import DetailAwareWeighting  # noqa: E402
from fidesr.components.distill.csd import ClassifierScoreDistillation  # noqa: E402
from fidesr.components.perceptual import PerceptualLoss  # noqa: E402
from fidesr.model import FiDeSRModule  # noqa: E402

CONFIGS = {  # in run order: the paper's and the 24 GiB configuration first
    "paper": dict(
        frozen=torch.float32,
        autocast=torch.float16,
        unet_ckpt=False,
        loss_chunk=None,
        channels_last=False,
        compile=(),
        cap_gib=None,
    ),
    "24gib": dict(
        frozen=torch.float16,
        autocast=torch.float16,
        unet_ckpt=False,
        loss_chunk=1,
        channels_last=False,
        compile=(),
        cap_gib=24.0,
    ),
    "16gib": dict(
        frozen=torch.float16,
        autocast=torch.float16,
        unet_ckpt=True,
        loss_chunk=1,
        channels_last=False,
        compile=(),
        cap_gib=16.0,
    ),
    "paper_chunk1": dict(
        frozen=torch.float32,
        autocast=torch.float16,
        unet_ckpt=False,
        loss_chunk=1,
        channels_last=False,
        compile=(),
        cap_gib=None,
    ),
    "bf16": dict(
        frozen=torch.bfloat16,
        autocast=torch.bfloat16,
        unet_ckpt=False,
        loss_chunk=None,
        channels_last=False,
        compile=(),
        cap_gib=None,
    ),
    "bf16_cl": dict(
        frozen=torch.bfloat16,
        autocast=torch.bfloat16,
        unet_ckpt=False,
        loss_chunk=None,
        channels_last=True,
        compile=(),
        cap_gib=None,
    ),
    "paper_compiled": dict(
        frozen=torch.float32,
        autocast=torch.float16,
        unet_ckpt=False,
        loss_chunk=None,
        channels_last=False,
        compile=("vae_decoder", "lpips"),
        cap_gib=None,
    ),
    "24gib_compiled": dict(
        frozen=torch.float16,
        autocast=torch.float16,
        unet_ckpt=False,
        loss_chunk=1,
        channels_last=False,
        compile=("vae_decoder", "lpips"),
        cap_gib=24.0,
    ),
}


def set_frozen_dtype(module: FiDeSRModule, dtype: torch.dtype) -> None:
    """Cast the frozen SD weights (UNet base layers, VAE, text encoder); LoRA and LRRB stay float32."""
    bb = module.backbone
    for name, p in bb.unet.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(dtype)
    bb.vae.to(dtype)
    bb.text_encoder.to(dtype)
    bb._prompt_cache.clear()  # cached embeddings follow the text encoder's dtype


def make_step(module: FiDeSRModule, batch: dict, autocast: torch.dtype, device: torch.device):
    """One optimizer step as Lightning runs it (autocast forward, backward scaled in fp16 on CUDA, clip 1.0,
    AdamW)."""
    params = module.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    grad_scaler = torch.amp.GradScaler(
        device.type, enabled=autocast == torch.float16 and device.type == "cuda"
    )

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast):
            loss = module.training_step(batch, 0)
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        grad_scaler.step(opt)
        grad_scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def build_module(tiny: bool, device: torch.device) -> FiDeSRModule:
    """The paper's training configuration on the SD 2.1-base architecture (random weights) or the tiny preset."""
    module = FiDeSRModule(
        backbone=build_backbone(tiny, device, lora_rank=8, lora_alpha=8),
        optimizer=functools.partial(torch.optim.AdamW, lr=5e-5),
        lrrb=random_lrrb(device),
        daw=DetailAwareWeighting(warmup_steps=0, ramp_steps=0),
        distill=ClassifierScoreDistillation(),
        perceptual=PerceptualLoss(net="vgg", backbone="random"),
        lambda_mse=1.0,
        lambda_lpips=2.0,
        lambda_distill=1.0,
        null_text_ratio=0.5,
    ).to(device)
    module.train()
    return module


def make_batch(b: int, size: int, device: torch.device) -> dict:
    """GT crops and their x4 bicubic-degraded LQ (resized back), with tags."""
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(b, 3, size, size, generator=g)
    lq = F.interpolate(F.interpolate(gt, scale_factor=0.25, mode="area"), scale_factor=4, mode="bicubic")
    return {
        "gt": gt.to(device),
        "lq": lq.clamp(0, 1).to(device),
        "prompt": ["a photo of a cat on a sofa, detailed fur"] * b,
        "name": [f"im{i}" for i in range(b)],
    }


def apply_config(module: FiDeSRModule, cfg: dict) -> None:
    """Frozen dtype, UNet gradient checkpointing, loss chunk and memory format of one configuration (undoes
    the previous one's)."""
    set_frozen_dtype(module, cfg["frozen"])
    module.loss_chunk = cfg["loss_chunk"]
    bb = module.backbone
    if cfg["unet_ckpt"]:
        bb.unet.enable_gradient_checkpointing()
    else:
        bb.unet.disable_gradient_checkpointing()
    for name, part in module._compilable_parts().items():  # torch.compile(mode="default") in place, or undone
        if name in cfg["compile"]:
            part.compile()
        elif part is not None:
            part._compiled_call_impl = None
    for net in (bb.unet, bb.vae):
        net.to(memory_format=torch.channels_last if cfg["channels_last"] else torch.contiguous_format)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny preset (CPU smoke run of the same code)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None, help="append JSON rows to this file")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per configuration (default 5 GPU, 1 CPU)"
    )
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 8 GPU, 2 tiny)")
    ap.add_argument("--size", type=int, default=None, help="GT crop size (default 512 GPU, 64 tiny)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument(
        "--budget-s", type=float, default=150.0, help="skip configurations that would run past this"
    )
    args = ap.parse_args(argv)

    device, cuda = setup_device(args.device)
    b = args.batch or (2 if args.tiny else 8)
    size = args.size or (64 if args.tiny else 512)
    steps = args.steps or (5 if cuda else 1)
    bench = Bench(device, args.out, args.budget_s, steps, warmup=2 if cuda else 1)
    bench.record(
        {
            "name": "env",
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__,
            "tiny": args.tiny,
            "date": time.strftime("%Y-%m-%d"),
            "batch": b,
            "size": size,
            "argv": sys.argv[1:],
        }
    )

    module = build_module(args.tiny, device)
    batch = make_batch(b, size, device)
    autocast_cpu = torch.bfloat16  # CPU autocast: bf16 (fp16 CPU kernels are not what anyone trains with)
    for name in args.configs:
        cfg = CONFIGS[name]
        if not cuda and cfg["frozen"] == torch.float16:  # CPU autocast is bf16; fp16 weights would not mix
            cfg = {**cfg, "frozen": torch.bfloat16}
        apply_config(module, cfg)
        cap = cfg["cap_gib"]
        cap_memory(device, cap)
        step = make_step(module, batch, cfg["autocast"] if cuda else autocast_cpu, device)
        row = bench.row(
            f"train step {name}",
            step,
            b,
            needs_s=150 if cfg["compile"] else 15,
            frozen=str(cfg["frozen"]).removeprefix("torch."),
            autocast=str(cfg["autocast"] if cuda else autocast_cpu).removeprefix("torch."),
            unet_ckpt=cfg["unet_ckpt"],
            loss_chunk=cfg["loss_chunk"],
            compile=list(cfg["compile"]),
            channels_last=cfg["channels_last"],
            cap_gib=cap if cuda else None,
        )
        if row and "s_per_call" in row:
            print(
                f"  -> {name}: {row['s_per_call']} s/step, peak {row.get('peak_gib', row.get('peak_rss_gib'))} GiB",
                flush=True,
            )
    cap_memory(device, None)

    print("\n| configuration | batch x px | s/step | peak GiB (CPU: process RSS) |")
    print("| --- | --- | ---: | ---: |")
    for r in bench.rows:
        if r.get("name", "").startswith("train step"):
            value = r.get("s_per_call", r.get("skipped", r.get("error", "")))
            print(
                f"| {r['name'][11:]} | {b} x {size} | {value} | {r.get('peak_gib', r.get('peak_rss_gib', ''))} |"
            )
    return 1 if any("error" in r for r in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
