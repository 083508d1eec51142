"""``fidesr-export``: a trained model -> a folder diffusers, peft, the Hub and fidesr all read.

    fidesr-export CKPT -o DIR [--overwrite]
    fidesr-export fidesr.pkl -o DIR              # the official checkpoint, in the same format
    fidesr-export osediff -o DIR                 # a released model by name (fidesr, osediff, pisasr)
    hf upload USER/NAME DIR                      # then: fidesr-upscale IN -o OUT --checkpoint USER/NAME

DIR holds ``pytorch_lora_weights.safetensors`` (the UNet LoRA in diffusers/PEFT format, written by
diffusers' ``save_lora_weights``), ``lrrb.safetensors``, ``config.json`` (what fidesr rebuilds the model
from) and ``README.md`` (a model card). No base-model weights are read: exporting takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from fidesr.errors import (
    UNSAFE_PICKLE_ADVICE,
    disk_full_error,
    is_disk_full,
    report_errors,
)
from fidesr.modelio.released import locate_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-export",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        help="released model name (fidesr, osediff, pisasr), training checkpoint (.ckpt), official .pkl, "
        "exported folder or Hub repo id",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in DIR")
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="fully unpickle a .ckpt/.pkl that weights_only loading refuses; this runs any code the "
        "file names: only for files whose origin you trust",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def last_validation_metrics(ckpt: Path) -> dict[str, float]:
    """The last validation row of the run's ``metrics.csv`` (``<run>/checkpoints/x.ckpt`` -> ``<run>``),
    ``val/...`` columns only; empty when there is none."""
    path = ckpt.resolve().parent.parent / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if any(k.startswith("val/") and v for k, v in r.items())]
    if not rows:
        return {}
    out = {}
    for k, v in rows[-1].items():
        if k.startswith("val/") and v:
            try:
                out[k] = float(v)
            except ValueError:
                continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from fidesr.modelio.read import TrainedWeights  # torch, peft, transformers (9 s): not for --help

        src = Path(locate_model(args.source))  # a released name: its file, fetched into the HF cache
        weights = TrainedWeights.load(src, unsafe_pickle=args.unsafe_pickle)
        metrics = last_validation_metrics(src) if src.is_file() else {}
        try:
            out = weights.save_pretrained(args.output, overwrite=args.overwrite, metrics=metrics)
        except Exception as err:  # diffusers/safetensors name no file: the export folder is what was written
            if is_disk_full(err):
                raise disk_full_error(err, args.output) from err
            raise
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        print(
            f"fidesr-export: wrote {out} ({size / 1e6:.2f} MB: {', '.join(sorted(p.name for p in out.iterdir()))})"
        )
        return 0

    return report_errors("fidesr-export", run, debug=args.debug, advice=UNSAFE_PICKLE_ADVICE)


if __name__ == "__main__":
    sys.exit(main())
