"""``fidesr-upscale``: super-resolve image files and folders; ``fidesr-upscale export``: write an adapter file.

    fidesr-upscale INPUT... -o OUTPUT_DIR --checkpoint CKPT|ADAPTER.safetensors [--pretrained SD]
    fidesr-upscale INPUT... -o OUTPUT_DIR --official fidesr.pkl --pretrained SD21_BASE
    fidesr-upscale export CKPT -o adapter.safetensors

Inputs are image files or folders (``--recursive`` descends). Each result is ``OUTPUT_DIR/<input stem>.png``,
written atomically (a temporary file renamed into place: Ctrl-C never leaves a partial PNG). Existing
outputs are skipped unless ``--overwrite``. An input that cannot be read or processed is reported by name
and skipped; the others are still processed, and the exit status is 1 if any input failed (130 on Ctrl-C).
Grayscale, RGBA (composited over white), palette, 16-bit and EXIF-rotated inputs are read by
``fidesr.data.imageio.load_image`` and give an RGB result. A file literally named ``export`` is given as
``./export``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fidesr.data.imageio import ImageLoadError, list_images, load_image, save_image

log = logging.getLogger("fidesr.upscale")


@dataclass
class Plan:
    """What one run will do: (input, output) jobs, and the inputs already settled before any model loads."""

    jobs: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-upscale",
        description="FiDeSR one-step diffusion super-resolution of image files and folders "
        "(`fidesr-upscale export CKPT -o FILE` writes an adapter file instead).",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and/or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT_DIR", help="output folder")
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", type=Path, help="training checkpoint (.ckpt) or exported adapter (.safetensors)")
    src.add_argument("--official", type=Path, metavar="PKL", help="official FiDeSR checkpoint (fidesr.pkl)")
    src.add_argument("--pretrained", help="base SD 2.1-base: hub id or local diffusers folder (required with "
                     "--official; overrides the one stored in a checkpoint/adapter)")  # fmt: skip
    q = p.add_argument_group("inference")
    q.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4, what FiDeSR is trained for)")
    q.add_argument("--lf-scale", type=float, default=None, help="LFIM low-frequency strength (default: model's, 0.2)")
    q.add_argument("--hf-scale", type=float, default=None, help="LFIM high-frequency strength (default: model's, 0.2)")
    q.add_argument("--no-lfim", action="store_true", help="switch LFIM off (same as --lf-scale 0 --hf-scale 0)")
    q.add_argument("--color-fix", choices=("adain", "wavelet", "none"), default=None,
                   help="colour correction towards the input (default: model's, adain)")  # fmt: skip
    q.add_argument("--prompt", default=None, help="text prompt (default: empty, as the reference)")
    q.add_argument("--min-lq-size", type=int, default=None, help="enlarge smaller inputs to this first (default 128)")
    t = p.add_argument_group("tiling and speed")
    t.add_argument("--tile", type=int, default=96, help="latent tile size in latent px (x8 image px); 0 = no tiling")
    t.add_argument("--tile-overlap", type=int, default=32, help="latent tile overlap in latent px (default 32)")
    t.add_argument("--tiles-per-call", type=int, default=1, help="latent tiles per UNet call (speed vs memory)")
    t.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=True,
                   help="tiled VAE encode (1024 px tiles) / decode (224 latent px tiles) of large images")  # fmt: skip
    t.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="auto = fp16 on CUDA, fp32 on CPU")  # fmt: skip
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--compile", nargs="?", const="reduce-overhead", default=None, metavar="MODE",
                   help="torch.compile the model (MODE default reduce-overhead; first image compiles, minutes)")  # fmt: skip
    t.add_argument("--batch-size", type=int, default=1, help="images of equal size processed together")
    o = p.add_argument_group("files")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    o.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    o.add_argument("--seed", type=int, default=0, help="seed of the VAE posterior sample (reproducible outputs)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-upscale export",
        description="Training checkpoint -> adapter file (LoRA + LRRB tensors + the config to rebuild the "
        "model; safetensors with JSON metadata). Load it with --checkpoint FILE.safetensors.",
    )
    p.add_argument("checkpoint", type=Path, help="fidesr-train checkpoint (.ckpt)")
    p.add_argument("-o", "--output", type=Path, required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return p


def plan_jobs(inputs: Sequence[Path], out_dir: Path, overwrite: bool, recursive: bool) -> Plan:
    """Expand folders, name the outputs, and settle missing inputs, name clashes and existing outputs."""
    plan = Plan()
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = list_images(item, recursive=recursive)
            if not found:
                plan.failed.append((str(item), "no images in folder"))
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            plan.failed.append((str(item), "no such file or folder"))
    claimed: dict[Path, Path] = {}
    for src in files:
        dst = out_dir / f"{src.stem}.png"
        if dst in claimed:
            plan.failed.append((str(src), f"output name {dst.name} already taken by {claimed[dst]}"))
            continue
        claimed[dst] = src
        if dst.exists() and not overwrite:
            plan.skipped.append((src, f"{dst} exists (use --overwrite)"))
        else:
            plan.jobs.append((src, dst))
    return plan


def _export(argv: Sequence[str]) -> int:
    from fidesr.export import export_adapter

    args = build_export_parser().parse_args(argv)
    if args.output.exists() and not args.overwrite:
        print(f"fidesr-upscale export: {args.output} exists (use --overwrite)", file=sys.stderr)
        return 1
    path = export_adapter(args.checkpoint, args.output)
    print(f"fidesr-upscale export: wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _load_pipeline(args: argparse.Namespace):
    from fidesr.pipeline import load_pipeline

    kwargs = dict(
        device=args.device, dtype=args.precision, tile_size=args.tile or None, tile_overlap=args.tile_overlap,
        tiles_per_call=args.tiles_per_call, vae_tiling=args.vae_tiling, scale=args.scale,
    )  # fmt: skip
    for key, value in (("color_fix", args.color_fix), ("prompt", args.prompt), ("min_lq_size", args.min_lq_size)):
        if value is not None:
            kwargs[key] = value
    pipe = load_pipeline(args.checkpoint, args.official, args.pretrained, **kwargs)
    if pipe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile shapes: the tuned convolution algorithms repeat
    if args.compile:
        pipe.compile(mode=args.compile)
    return pipe


def _batches(jobs: list[tuple[Path, Path]], size: int):
    """Consecutive jobs in groups of up to ``size`` (grouped by image size after loading)."""
    for i in range(0, len(jobs), max(1, size)):
        yield jobs[i : i + max(1, size)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all written or skipped, 1 some input failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    args = build_parser().parse_args(argv)
    if (args.checkpoint is None) == (args.official is None):
        build_parser().error("give exactly one of --checkpoint or --official")
    if args.no_lfim:
        args.lf_scale, args.hf_scale = 0.0, 0.0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm.auto import tqdm

    start = time.time()
    plan = plan_jobs(args.inputs, args.output, args.overwrite, args.recursive)
    for src, why in plan.skipped:
        print(f"skip {src}: {why}", file=sys.stderr)
    for name, why in plan.failed:
        print(f"error {name}: {why}", file=sys.stderr)
    written: list[Path] = []
    if plan.jobs:
        pipe = _load_pipeline(args)
        generator = torch.Generator(device=pipe.device)
        bar = tqdm(total=len(plan.jobs), unit="img", desc="upscale", disable=args.no_progress, file=sys.stderr)
        try:
            for chunk in _batches(plan.jobs, args.batch_size):
                loaded: list[tuple[Path, Path, torch.Tensor]] = []
                for src, dst in chunk:
                    try:
                        loaded.append((src, dst, load_image(src)))
                    except ImageLoadError as err:
                        plan.failed.append((str(src), str(err)))
                        tqdm.write(f"error {src}: {err}", file=sys.stderr)
                        bar.update(1)
                groups: dict[tuple[int, ...], list[tuple[Path, Path, torch.Tensor]]] = {}
                for item in loaded:
                    groups.setdefault(tuple(item[2].shape), []).append(item)
                for group in groups.values():
                    try:
                        generator.manual_seed(args.seed)
                        out = pipe(torch.stack([img for _, _, img in group]), lf_scale=args.lf_scale,
                                   hf_scale=args.hf_scale, generator=generator).sr.cpu()  # fmt: skip
                        for (_, dst, _), sr in zip(group, out, strict=True):
                            written.append(save_image(sr, dst))
                    except (RuntimeError, ValueError, OSError) as err:  # e.g. CUDA out of memory: next input
                        for src, _, _ in group:
                            plan.failed.append((str(src), f"{type(err).__name__}: {err}"))
                            tqdm.write(f"error {src}: {type(err).__name__}: {err}", file=sys.stderr)
                    bar.update(len(group))
        except KeyboardInterrupt:
            bar.close()
            print(f"fidesr-upscale: interrupted after {len(written)} written (no partial files)", file=sys.stderr)
            return 130
        bar.close()
    print(f"fidesr-upscale: {len(written)} written, {len(plan.skipped)} skipped (exist), {len(plan.failed)} failed "
          f"-> {args.output} ({time.time() - start:.1f} s)")  # fmt: skip
    if plan.failed:
        print("failed: " + ", ".join(name for name, _ in plan.failed), file=sys.stderr)
    return 1 if plan.failed else 0


if __name__ == "__main__":
    sys.exit(main())
