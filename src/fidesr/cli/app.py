"""``fidesr-app``: the interactive explorer (Gradio) around one loaded model.

    fidesr-app [--model fidesr|osediff|pisasr|CKPT|EXPORTED_DIR|USER/NAME] [--pretrained SD] [--host 127.0.0.1]
    fidesr-app --model fidesr.pkl --pretrained SD21_BASE

Needs the optional extra ``fidesr[app]`` (``make install`` installs it). The model is loaded once, then the
page is served on ``http://HOST:PORT`` until Ctrl-C; it fetches nothing from the internet. See
:mod:`fidesr.app` and docs/inference.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fidesr.cli.options import (
    add_model_options,
    add_tiling_options,
    check_model_choice,
    finite,
    int_at_least,
    loader_kwargs,
    model_source,
)
from fidesr.errors import UNSAFE_PICKLE_ADVICE, report_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-app",
        description="Interactive FiDeSR explorer in the browser "
        "(LFIM strengths, colour fix, before/after against bicubic).",
    )
    add_model_options(p, "model (one of; as fidesr-upscale)")
    s = p.add_argument_group("server")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int_at_least(0), default=7860, help="port (default 7860)")
    s.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=1024 * 1024,
        help="refuse larger uploads, width x height read from the header before decoding "
        "(default 1048576: 1024 x 1024 -> 4096 x 4096 px)",
    )
    s.add_argument(
        "--max-upload-mb",
        type=finite(0.001),
        default=20.0,
        help="refuse larger upload files, before the server stores them (default 20 MB: a 1024 x 1024 "
        "photo is 1-4 MB)",
    )
    s.add_argument(
        "--time-limit",
        type=finite(0),
        default=180.0,
        metavar="SECONDS",
        help="stop a request that runs longer and answer it with an error, so that one slow image does not "
        "hold the queue (default 180 s; 0 = no limit)",
    )
    s.add_argument(
        "--queue-size",
        type=int_at_least(1),
        default=16,
        help="requests that may wait for the model; more are refused (default 16)",
    )
    s.add_argument("--no-examples", action="store_true", help="no example images in the page")
    m = p.add_argument_group("inference (as fidesr-upscale)")
    add_tiling_options(m)
    m.add_argument("--seed", type=int, default=0, help="seed of the VAE posterior sample (default 0)")
    p.add_argument("--debug", action="store_true", help="show the traceback of a start-up error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: load the model, serve the page until Ctrl-C. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_choice(parser, args)
    # Before Gradio is imported: it reads this at import time (no usage statistics, no version check).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(
            "fidesr-app: Gradio is not installed; install the extra: pip install 'fidesr[app]'",
            file=sys.stderr,
        )
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up self-check requests
    # After the Gradio check, and not for --help: fidesr.app and the pipeline import torch and peft (8 s).
    from fidesr.app import InputLimits, build_app, launch_app, write_examples
    from fidesr.pipeline import FiDeSRPipeline

    print(f"fidesr-app: loading {model_source(args)} ...", flush=True)
    kwargs = loader_kwargs(args)
    try:
        # A model that cannot be loaded (missing file, wrong format, no SD weights) is one line, as in
        # fidesr-upscale; anything else is a bug and keeps its traceback.
        pipe = report_errors(
            "fidesr-app",
            lambda: FiDeSRPipeline.from_pretrained(model_source(args), pretrained=args.pretrained, **kwargs),
            args.debug,
            advice=UNSAFE_PICKLE_ADVICE,
        )
    except SystemExit as stop:
        return int(stop.code or 0)
    with tempfile.TemporaryDirectory(prefix="fidesr-app-") as work_dir:
        examples = [] if args.no_examples else write_examples(Path(work_dir) / "examples", scale=args.scale)
        limits = InputLimits(
            max_pixels=args.max_pixels,
            max_bytes=int(args.max_upload_mb * 1e6),
            seconds=args.time_limit or None,
        )
        demo = build_app(pipe, Path(work_dir) / "outputs", limits=limits, examples=examples, seed=args.seed)
        try:
            launch_app(
                demo, work_dir, host=args.host, port=args.port, limits=limits, queue_size=args.queue_size
            )
        except OSError as err:  # port taken, address not available
            print(f"fidesr-app: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
