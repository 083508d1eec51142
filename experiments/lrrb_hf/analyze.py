"""LRRB high-frequency error analysis (the paper's "LRRB lowers the HF noise-prediction error by 1.62 %").

    python experiments/lrrb_hf/analyze.py CKPT --lq DIR --gt DIR [--out DIR] [--device cuda] [--limit N]

For every LQ/GT pair (matched by file stem) the script runs the model's own preprocessing and backbone
(``FiDeSRPipeline``: bicubic x4, encode), the one-step UNet and the LRRB, and compares the residual
before (``r``) and after (``r' = r + LRRB(z_L, r)``) the LRRB with the ideal residual ``z_L - z_H``
(``z_H`` = the encoded GT) in the high-frequency band (``fidesr.components.hf_error``: Butterworth
high-pass, cut-off 0.32, order 2, the official grid). Prints and writes ``lrrb_hf.md`` and
``lrrb_hf.csv`` (per image, then the data-set figure: a ratio of means, as ``HFErrorMeter`` computes it).

CKPT is anything ``FiDeSRPipeline.from_pretrained`` loads: a training checkpoint (``*.ckpt``), an exported
folder (``fidesr-export``), a Hub repo id, or the released FiDeSR weights (``fidesr.pkl --pretrained SD21``;
``--official PKL`` is the same). The VAE posterior is sampled with a
seeded generator (``--seed``), so reruns give the same numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from fidesr.components.hf_error import HFErrorMeter, high_frequency_error, ideal_residual
from fidesr.metrics.images import list_images, match_pairs, read_for_metrics
from fidesr.metrics.published import LRRB_HF_REDUCTION_PCT
from fidesr.metrics.tables import write_csv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="training checkpoint (.ckpt), exported folder, official .pkl or Hub repo id",
    )
    p.add_argument(
        "--official", help="the released FiDeSR .pkl instead of CKPT (the same as giving it as CKPT)"
    )
    p.add_argument("--pretrained", help="SD 2.1-base hub id or local folder (replaces the checkpoint's)")
    p.add_argument("--lq", required=True, type=Path, help="LQ images (e.g. StableSR .../test_LR)")
    p.add_argument("--gt", required=True, type=Path, help="GT images, same file stems (.../test_HR)")
    p.add_argument("--out", type=Path, help="output folder (default: <checkpoint folder>/lrrb_hf)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: fp16 on CUDA)")
    p.add_argument("--cutoff", type=float, default=0.32, help="high-pass cut-off (LFIM's HF cut-off)")
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--grid", default="official", choices=["official", "centered"])
    p.add_argument("--limit", type=int, default=None, help="first N pairs only")
    p.add_argument("--seed", type=int, default=0, help="VAE posterior samples")
    return p


@torch.no_grad()
def analyze(pipe, pairs: list[tuple[Path, Path]], meter: HFErrorMeter, seed: int) -> list[dict[str, object]]:
    """Per-image HF errors; ``meter`` accumulates the data-set figure."""
    rows = []
    resized = 0
    for lq_path, gt_path in pairs:
        g = torch.Generator(device=pipe.device).manual_seed(seed)
        lq = read_for_metrics(lq_path).to(pipe.device)
        up, _ = pipe.upsample(lq)
        gt = read_for_metrics(gt_path).to(pipe.device)
        if gt.shape[-2:] != up.shape[-2:]:
            # The model works at the size of the (enlarged, trimmed) upsampled LQ; the GT follows it.
            gt = F.interpolate(gt, size=up.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
            resized += 1
        z_lq = pipe.encode(up * 2 - 1, g)
        z_hq = pipe.encode(gt * 2 - 1, g)
        out = pipe.denoise(z_lq, pipe.prompt_embeds(pipe.prompt, 1).to(z_lq.dtype))
        ideal = ideal_residual(z_lq.float(), z_hq.float())
        meter.update(out.residual.float(), out.refined_residual.float(), ideal)
        args = (meter.cutoff, meter.order, meter.grid)
        before = float(high_frequency_error(out.residual.float(), ideal, *args)[0])
        after = float(high_frequency_error(out.refined_residual.float(), ideal, *args)[0])
        rows.append(
            {
                "name": lq_path.stem,
                "hf_error_before": before,
                "hf_error_after": after,
                "reduction_pct": 100.0 * (before - after) / before if before > 0 else 0.0,
            }
        )
    if resized:
        print(
            f"note: {resized} GT image(s) resized to the model's working size (GT not scale x LQ)",
            file=sys.stderr,
        )
    return rows


def _pct(value: float) -> str:
    # A diverged LRRB gives reductions of -1e15 %: keep the table readable.
    return f"{value:.2f}" if abs(value) < 1e4 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.checkpoint is None) == (args.official is None):
        print("error: give CKPT or --official PKL (with --pretrained)", file=sys.stderr)
        return 2
    from fidesr.pipeline import FiDeSRPipeline

    # No LFIM: the analysis is about the residual, before any frequency editing.
    pipe = FiDeSRPipeline.from_pretrained(
        args.checkpoint or args.official,
        pretrained=args.pretrained,
        device=None if args.device == "auto" else args.device,
        dtype=args.dtype,
    )
    if pipe.lrrb is None:
        print("error: this model has no LRRB (lrrb: null): nothing to analyse", file=sys.stderr)
        return 2
    if pipe.backbone.prediction != "residual":
        print(
            f"warning: prediction={pipe.backbone.prediction!r}: the LRRB refines an x0-type output, the "
            "'ideal residual' z_L - z_H is the FiDeSR (residual) reading",
            file=sys.stderr,
        )
    pairs = match_pairs(list_images(args.lq), list_images(args.gt))[: args.limit]
    meter = HFErrorMeter(cutoff=args.cutoff, order=args.order, grid=args.grid)
    rows = analyze(pipe, pairs, meter, args.seed)
    total = meter.compute()

    source = Path(args.checkpoint or args.official)
    out = args.out or source.parent / "lrrb_hf"
    out.mkdir(parents=True, exist_ok=True)
    cols = ["name", "hf_error_before", "hf_error_after", "reduction_pct"]
    write_csv(out / "lrrb_hf.csv", [*rows, {"name": "ALL (ratio of means)", **total}], cols)
    md = [
        f"# LRRB high-frequency error: `{source.name}`",
        "",
        f"- pairs: {len(rows)} from `{args.lq}` / `{args.gt}`; high-pass cut-off {args.cutoff}, order "
        f"{args.order}, {args.grid} grid; VAE samples seeded with {args.seed}",
        "- HF error = mean over channels and pixels of HP(r - (z_L - z_H))^2; reduction = 100 (before - after) / before",
        "",
        "| | HF error, UNet residual r | HF error, after LRRB r' | reduction % |",
        "|---|---|---|---|",
        f"| this model | {total['hf_error_before']:.6g} | {total['hf_error_after']:.6g} | {_pct(total['reduction_pct'])} |",
        f"| FiDeSR paper | - | - | {LRRB_HF_REDUCTION_PCT:.2f} |",
        "",
        f"Per image: `{out / 'lrrb_hf.csv'}` (median reduction "
        f"{_pct(sorted(r['reduction_pct'] for r in rows)[len(rows) // 2])} %).",
        "",
    ]
    (out / "lrrb_hf.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
