"""``fidesr-report``: result tables and plots of a Hydra sweep (training ablation or LFIM strengths).

    fidesr-report SWEEP_DIR [--baseline LABEL] [--paper-rows] [--crop NAME:X,Y,SIZE ...] [--wandb auto|on|off] [--strict]
    fidesr-report --lfim SWEEP_DIR                 # an fidesr-eval sweep over lfim.lf_scale / lfim.hf_scale

Training sweeps (``fidesr-train -m ...``): jobs are grouped into configurations by the overrides that vary
between them (seeds are averaged); every configuration is compared with a baseline (default: every swept
component off) image by image on the same validation images: Δ, a 95% bootstrap interval over images (and
seeds) and a Wilcoxon signed-rank test; "best" only where the interval excludes zero. Into SWEEP_DIR:

- ``ablation.md`` / ``ablation.csv``: values (mean ± std), ``<metric>_delta`` / ``_ci_low`` / ``_ci_high`` /
  ``_p``, ``n_images``, ``n_seeds``, provenance (git commit, config hash); ``--paper-rows``: the paper's
  DIV2K ablation as its own table (``ablation_paper.csv``), with each effect's direction;
- ``deltas.png`` (differences with intervals around zero), ``perception_distortion.png``, ``curves.png``
  (training losses, EMA-smoothed), ``val_curves.png``, ``comparisons.png`` (the same zoomed crops of LQ,
  bicubic, every configuration and GT);
- failed or unfinished jobs listed; provenance warnings (in the Markdown and on stderr).

With ``--lfim`` the jobs are ``fidesr-eval`` runs: ``lfim.md``/``lfim.csv``, ``lfim_tradeoff.png``,
``lfim_strength.png``. The tables, plots and comparisons go to W&B when the jobs logged there (or
``--wandb on``). The work is done by the ``fidesr.report`` package; this module is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fidesr.report.ablation import AblationOptions, ablation_report
from fidesr.report.comparisons import Box
from fidesr.report.lfim import lfim_report
from fidesr.report.stats import N_RESAMPLES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fidesr-report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_dir", type=Path, help="a multirun folder (…/multirun_<time>) holding job folders")
    p.add_argument(
        "--lfim", action="store_true", help="an fidesr-eval sweep over lfim.lf_scale / lfim.hf_scale"
    )
    p.add_argument(
        "--baseline",
        metavar="LABEL",
        help="the configuration others are compared with, e.g. 'daw=off,lrrb=off' "
        "(default: every swept component off, else the first)",
    )
    p.add_argument(
        "--paper-rows", action="store_true", help="add the paper's DIV2K ablation rows (DESIGN sec. 3)"
    )
    p.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="NAME:X,Y,SIZE",
        help="a crop box for comparisons.png in GT pixels (repeatable; default: chosen where the "
        "configurations differ most)",
    )
    p.add_argument(
        "--comparisons", type=int, default=3, metavar="N", help="images in comparisons.png (default 3)"
    )
    p.add_argument(
        "--crop-size", type=int, default=32, metavar="PX", help="side of the automatic crops, GT pixels"
    )
    p.add_argument(
        "--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples (default %(default)s)"
    )
    p.add_argument(
        "--wandb",
        choices=["auto", "on", "off"],
        default="auto",
        help="upload the table and plots to W&B (auto: when the jobs logged to W&B)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 on provenance warnings or failed jobs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fidesr-report``; returns the exit code (also when called from Python)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sweep_dir: Path = args.sweep_dir.expanduser()
    if not sweep_dir.is_dir():
        print(f"fidesr-report: not a folder: {sweep_dir}", file=sys.stderr)
        return 2
    try:
        if args.lfim:
            code = lfim_report(sweep_dir, wandb=args.wandb, strict=args.strict)
        else:
            opts = AblationOptions(
                paper_rows=args.paper_rows,
                wandb=args.wandb,
                strict=args.strict,
                baseline=args.baseline,
                boxes=[Box.parse(b) for b in args.crop],
                n_comparisons=args.comparisons,
                crop_size=args.crop_size,
                n_resamples=args.resamples,
            )
            code = ablation_report(sweep_dir, opts)
    except ValueError as err:  # bad --crop / --baseline: say which, no traceback
        print(f"fidesr-report: {err}", file=sys.stderr)
        code = 2
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
