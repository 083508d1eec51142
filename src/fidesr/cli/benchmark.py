"""``fidesr-benchmark``: models x test sets x the protocol's metrics, one table (logic: :mod:`fidesr.benchmark`).

    fidesr-benchmark --models fidesr osediff PATH ... --sets realsr drealsr div2k_val FOLDER ... \\
        [--metrics psnr ssim lpips ...] -o OUT

A model is a released name (``fidesr``, ``osediff``, ``pisasr``), a training checkpoint, an exported folder,
an official ``.pkl`` or a Hub repo id; a set is a name (``fidesr-data download``) or a folder holding
``lq/`` + ``gt/`` (or ``test_LR/`` + ``test_HR/``). Writes ``OUT/table.csv``, ``OUT/table.md``,
``OUT/perception_distortion.png`` and ``OUT/<model>/<set>/{sr/,per_image.csv,run.json}``; a re-run reuses
the images already written and scored. Missing models, sets and metric weights are fetched first when
online; offline (``FIDESR_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) it stops before any work, listing each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fidesr.benchmark import DEFAULT_METRICS, BenchmarkOptions, run_benchmark
from fidesr.errors import report_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fidesr-benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="M",
        help="released name, checkpoint, exported folder, official .pkl or Hub repo id",
    )
    p.add_argument(
        "--sets",
        nargs="+",
        required=True,
        metavar="S",
        help="realsr | drealsr | div2k_val | a folder with lq/ + gt/",
    )
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="default: the protocol's 9")
    p.add_argument("-o", "--output", required=True, help="output folder (re-use it to resume)")
    p.add_argument("--pretrained", help="base SD 2.1-base (hub id or folder) replacing the one a model names")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    p.add_argument("--tile", type=int, default=96, help="latent tile size (0 = whole image)")
    p.add_argument("--weights-dir", help="metric weights (default $FIDESR_WEIGHTS_DIR, else torch's cache)")
    p.add_argument("--data-dir", help="where named sets live (default $FIDESR_DATA_DIR, else ./data)")
    p.add_argument("--mirror", help="folder or base URL holding StableSR_testsets.zip")
    p.add_argument("--unsafe-pickle", action="store_true", help="fully unpickle trusted .ckpt/.pkl files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = BenchmarkOptions(
        metrics=args.metrics,
        device=args.device,
        precision=args.precision,
        pretrained=args.pretrained,
        tile_size=args.tile or None,
        weights_dir=args.weights_dir,
        data_dir=args.data_dir,
        mirror=args.mirror,
        unsafe_pickle=args.unsafe_pickle,
        progress=not args.no_progress,
    )

    def run() -> int:
        files = run_benchmark(args.models, args.sets, args.output, opts)
        print(files["table_md"].read_text())
        print("wrote " + ", ".join(str(p) for p in files.values()))
        return 0

    return report_errors("fidesr-benchmark", run, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
