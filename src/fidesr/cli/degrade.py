"""``fidesr-degrade``: synthesise LQ images from a folder of GT images with a degradation preset.

Each image gets its own parameters, drawn from a generator seeded by ``(--seed, file name)``: the LQ of an image
depends on the seed and its name only, not on which other files are in the folder or in which order they run.

Existing outputs are never replaced without ``--overwrite`` (the run stops before writing anything and names
them); an empty input folder, or an output path that is a file, is an error. An unreadable image (corrupt,
truncated, over ``--max-pixels``: a decompression bomb) is named and skipped, the others are written, and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import default_collate
from tqdm import tqdm

from fidesr.cli.options import int_at_least
from fidesr.data.degradations import PRESETS, load_preset
from fidesr.data.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, list_images, load_image, save_image
from fidesr.errors import report_errors
from fidesr.seeding import derive_seed


def image_seed(seed: int, name: str) -> int:
    """Deterministic 63-bit seed from the run seed and a file name (stable across runs and platforms):
    :func:`fidesr.seeding.derive_seed` of ``"<seed>:<name>"``."""
    return derive_seed(seed, name, sep=":")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fidesr-degrade",
        description="Write synthetic LQ images (PNG, same file stems) for every image in INPUT_DIR.",
    )
    parser.add_argument("input_dir", type=Path, metavar="INPUT_DIR", help="folder of GT images")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="folder for the LQ PNGs")
    parser.add_argument(
        "--preset", choices=PRESETS, default="osediff", help="degradation preset (default: osediff)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="run seed; each image's params derive from it and its name"
    )
    parser.add_argument("--scale", type=int_at_least(1), default=4, help="downscale factor (default: 4)")
    parser.add_argument(
        "--resize-back",
        action="store_true",
        help="resize the LQ back to the (cropped) GT size, as training sees it",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the degradation (default: cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace LQ files already in OUTPUT_DIR")
    parser.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"skip larger images (decompression bombs; default {DEFAULT_MAX_PIXELS:,})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all written, 1 some image failed, 2 nothing could start).
    A full disk is one line naming the file (``fidesr-degrade: error: no space left writing ...``)."""
    args = build_parser().parse_args(argv)
    try:
        return report_errors("fidesr-degrade", lambda: _degrade(args))
    except SystemExit as stop:
        return int(stop.code or 0)


def _degrade(args: argparse.Namespace) -> int:
    try:
        files = list_images(args.input_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not files:
        print(
            f"error: no images in {args.input_dir} (extensions: png, jpg, jpeg, bmp, tif, tiff, webp)",
            file=sys.stderr,
        )
        return 2
    if args.output_dir.resolve() == args.input_dir.resolve():
        # <stem>.png in the same folder would overwrite PNG inputs.
        print("error: OUTPUT_DIR must differ from INPUT_DIR", file=sys.stderr)
        return 2
    if args.output_dir.exists() and not args.output_dir.is_dir():
        print(f"error: OUTPUT_DIR {args.output_dir} exists and is not a folder", file=sys.stderr)
        return 2
    existing = sorted(p.name for p in files if (args.output_dir / f"{p.stem}.png").exists())
    if existing and not args.overwrite:
        shown = ", ".join(f"{Path(n).stem}.png" for n in existing[:10]) + (
            " ..." if len(existing) > 10 else ""
        )
        print(
            f"error: {len(existing)} output(s) already in {args.output_dir} ({shown}); nothing written "
            "(--overwrite replaces them)",
            file=sys.stderr,
        )
        return 2
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create OUTPUT_DIR {args.output_dir}: {err.strerror}", file=sys.stderr)
        return 2
    degradation = load_preset(args.preset, scale=args.scale, resize_back=args.resize_back)
    device = torch.device(args.device)

    failed: list[str] = []
    seen: dict[str, Path] = {}
    written = 0
    for path in tqdm(files, desc=f"degrade ({args.preset})", unit="img", file=sys.stderr):
        if path.stem in seen:  # a.jpg and a.png would both write a.png
            failed.append(path.name)
            tqdm.write(f"skipped {path}: same name stem as {seen[path.stem].name}", file=sys.stderr)
            continue
        seen[path.stem] = path
        try:
            gt = load_image(path, args.max_pixels)
        except ImageLoadError as err:
            failed.append(path.name)
            tqdm.write(f"skipped: {err}", file=sys.stderr)  # the message names the file
            continue
        h, w = (s - s % args.scale for s in gt.shape[-2:])  # crop to a multiple of the scale
        if h == 0 or w == 0:
            failed.append(path.name)
            tqdm.write(f"skipped {path}: smaller than the scale {args.scale}", file=sys.stderr)
            continue
        gen = torch.Generator().manual_seed(image_seed(args.seed, path.name))
        params = {k: v.to(device) for k, v in default_collate([degradation.sample(gen)]).items()}
        with torch.no_grad():
            lq = degradation.apply(gt[None, :, :h, :w].to(device), params)[0]
        save_image(lq.cpu(), args.output_dir / f"{path.stem}.png")
        written += 1

    print(
        f"fidesr-degrade: {written} written, {len(failed)} failed of {len(files)} images "
        f"(preset {args.preset}, seed {args.seed}, scale {args.scale}"
        f"{', resized back' if args.resize_back else ''}) -> {args.output_dir}"
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
