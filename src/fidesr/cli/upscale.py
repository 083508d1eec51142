"""``fidesr-upscale``: super-resolve image files and folders.

    fidesr-upscale INPUT... -o OUTPUT_DIR [--model fidesr|osediff|pisasr|CKPT|EXPORT_DIR|FILE.pkl|USER/NAME]
    fidesr-upscale INPUT... -o OUTPUT_DIR --model fidesr.pkl [--pretrained SD21_BASE]

``--model`` defaults to ``fidesr``, the released FiDeSR model (fetched into the Hugging Face cache; see
:mod:`fidesr.modelio.released`); ``--checkpoint`` is its old name, ``--official PKL`` a deprecated one.
The model is loaded by :meth:`fidesr.pipeline.FiDeSRPipeline.from_pretrained`.

Inputs are image files or folders (``--recursive`` descends). Each result is ``OUTPUT_DIR/<input stem>.png``,
written atomically (a temporary file renamed into place: Ctrl-C never leaves a partial PNG). Existing
outputs are skipped unless ``--overwrite``. An input that cannot be read or processed is reported by name
and skipped (so is an image over ``--max-pixels``, e.g. a decompression bomb, and one whose result is not
finite: no black PNG is written); the others are still processed, and the exit status is 1 if any input
failed (130 on Ctrl-C). Grayscale, RGBA (composited over
white), palette, 16-bit and EXIF-rotated inputs are read by ``fidesr.data.imageio.load_image`` and give an
RGB result. The output folder is checked before the model is loaded. Errors are one line (``--debug``
shows the traceback). ``fidesr-upscale export`` is ``fidesr-export`` (kept for old scripts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fidesr.cli.export import main as export_main
from fidesr.cli.options import (
    add_model_options,
    add_tiling_options,
    check_model_choice,
    finite,
    int_at_least,
    loader_kwargs,
    model_source,
    pisasr_strengths,
)
from fidesr.data.imageio import DEFAULT_MAX_PIXELS, list_images
from fidesr.errors import (
    UNSAFE_PICKLE_ADVICE,
    ConfigValueError,
    report_errors,
)
from fidesr.upscaling import Upscaler

log = logging.getLogger("fidesr.upscale")


@dataclass
class Plan:
    """What one run will do: (input, output) jobs, and the inputs already settled before any model loads
    (``notes``: inputs named more than once, processed once)."""

    jobs: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-upscale",
        description="FiDeSR one-step diffusion super-resolution of image files and folders.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and/or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT_DIR", help="output folder")
    add_model_options(p)
    q = p.add_argument_group("inference")
    q.add_argument(
        "--lf-scale", type=finite(0), default=None, help="LFIM low-frequency strength (default: model's, 0.2)"
    )
    q.add_argument(
        "--hf-scale",
        type=finite(0),
        default=None,
        help="LFIM high-frequency strength (default: model's, 0.2)",
    )
    q.add_argument(
        "--no-lfim", action="store_true", help="switch LFIM off (same as --lf-scale 0 --hf-scale 0)"
    )
    q.add_argument(
        "--lambda-pix",
        type=finite(),
        default=None,
        help="PiSA-SR models (two LoRA sets): strength of the pixel-level set (default 1)",
    )
    q.add_argument(
        "--lambda-sem",
        type=finite(),
        default=None,
        help="PiSA-SR models: strength of the semantic-level set (default 1; 1, 1 = both merged)",
    )
    q.add_argument(
        "--color-fix",
        choices=("adain", "wavelet", "none"),
        default=None,
        help="colour correction towards the input (default: model's, adain)",
    )
    q.add_argument("--prompt", default=None, help="text prompt (default: empty, as the reference)")
    q.add_argument(
        "--min-lq-size",
        type=int_at_least(0),
        default=None,
        help="enlarge smaller inputs to this first (default 128)",
    )
    t = p.add_argument_group("tiling and speed")
    add_tiling_options(t)
    t.add_argument(
        "--tiles-per-call",
        type=int_at_least(1),
        default=1,
        help="latent tiles per UNet call (speed vs memory)",
    )
    t.add_argument(
        "--compile",
        nargs="?",
        const="reduce-overhead",
        default=None,
        metavar="MODE",
        help="torch.compile the model (MODE default reduce-overhead; first image compiles, minutes)",
    )
    t.add_argument(
        "--batch-size", type=int_at_least(1), default=1, help="images of equal size processed together"
    )
    o = p.add_argument_group("files")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    o.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    o.add_argument(
        "--seed", type=int, default=0, help="seed of the VAE posterior sample (reproducible outputs)"
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse (and skip) larger inputs, read from the header before decoding: decompression "
        f"bombs (default {DEFAULT_MAX_PIXELS:,}, PIL's threshold)",
    )
    o.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    seen: set[Path] = set()
    for src in files:
        if (
            src.resolve() in seen
        ):  # the same file twice (a.png a.png, or a.png and its folder): once is enough
            note = f"{src} is given more than once; processed once"
            if note not in plan.notes:
                plan.notes.append(note)
            continue
        seen.add(src.resolve())
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


def check_output_dir(path: Path) -> None:
    """Create the output folder (or check the existing one) and that it is writable, before any model loads."""
    if path.exists() and not path.is_dir():
        raise ConfigValueError(f"-o {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigValueError(f"-o {path}: cannot create the output folder ({err.strerror})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigValueError(f"-o {path}: the output folder is not writable")


def _load_pipeline(args: argparse.Namespace):
    # Here, not at the top: `fidesr-upscale --help` and a run whose outputs all exist never import peft,
    # diffusers and transformers (about 10 s).
    from fidesr.pipeline import FiDeSRPipeline

    kwargs = loader_kwargs(args, tiles_per_call=args.tiles_per_call)
    for key, value in (
        ("color_fix", args.color_fix),
        ("prompt", args.prompt),
        ("min_lq_size", args.min_lq_size),
    ):
        if value is not None:
            kwargs[key] = value
    pipe = FiDeSRPipeline.from_pretrained(model_source(args), pretrained=args.pretrained, **kwargs)
    if pipe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed tile shapes: the tuned convolution algorithms repeat
    if args.compile:
        pipe.compile(mode=args.compile)
    return pipe


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all written or skipped, 1 some input failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        print(
            "fidesr-upscale export is now fidesr-export (an exported folder, which diffusers also reads)",
            file=sys.stderr,
        )
        return export_main(argv[1:])
    args = build_parser().parse_args(argv)
    check_model_choice(build_parser(), args)
    if args.no_lfim:
        args.lf_scale, args.hf_scale = 0.0, 0.0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return report_errors(
            "fidesr-upscale", lambda: _upscale(args), debug=args.debug, advice=UNSAFE_PICKLE_ADVICE
        )
    except SystemExit as stop:
        return int(stop.code or 0)


def _upscale(args: argparse.Namespace) -> int:
    start = time.time()
    check_output_dir(args.output)
    plan = plan_jobs(args.inputs, args.output, args.overwrite, args.recursive)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    for src, why in plan.skipped:
        print(f"skip {src}: {why}", file=sys.stderr)
    for name, why in plan.failed:
        print(f"error {name}: {why}", file=sys.stderr)
    written: list[Path] = []
    if plan.jobs:
        pipe = _load_pipeline(args)
        upscaler = Upscaler(
            pipe,
            seed=args.seed,
            batch_size=args.batch_size,
            max_pixels=args.max_pixels,
            call={
                "lf_scale": args.lf_scale,
                "hf_scale": args.hf_scale,
                "strengths": pisasr_strengths(args.lambda_pix, args.lambda_sem),
            },
            progress=not args.no_progress,
            report=lambda name, why: tqdm.write(f"error {name}: {why}", file=sys.stderr),
        )
        try:
            upscaler.run(plan.jobs)
        except KeyboardInterrupt:
            print(
                f"fidesr-upscale: interrupted after {len(upscaler.written)} written (no partial files)",
                file=sys.stderr,
            )
            return 130
        finally:
            written = upscaler.written
            plan.failed.extend(upscaler.failed)
    print(
        f"fidesr-upscale: {len(written)} written, {len(plan.skipped)} skipped (exist), {len(plan.failed)} failed "
        f"-> {args.output} ({time.time() - start:.1f} s)"
    )
    if plan.failed:
        print("failed: " + ", ".join(name for name, _ in plan.failed), file=sys.stderr)
    return 1 if plan.failed else 0


if __name__ == "__main__":
    sys.exit(main())
