"""Held-out check of a demo checkpoint: natural photographs the demo never used, downscaled x4 with
antialiased bicubic, super-resolved, and scored against bicubic upsampling of the same LQ (issue 21).

    python experiments/demo/heldout.py runs/demo/<run>/checkpoints/last.ckpt            # RealSR GT crops
    python experiments/demo/heldout.py CKPT --images /my/photos --n 24 --crop 256 --grey

The default images are the HQ (GT) photographs of ../shared/datasets/realsr (Canon and Nikon scenes: none
is a demo photograph). Each is centre-cropped to ``--crop`` px, its LQ made as the demo's validation LQ
(antialiased bicubic x4, rounded to 8 bits), and SR and bicubic are scored with RGB PSNR / SSIM (skimage,
no border crop). ``--grey``: the same with the photographs turned grey (replicated to RGB). Prints a
per-image table and the means; writes it as CSV with ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fidesr.data.imageio import list_images, load_image
from fidesr.pipeline import FiDeSRPipeline

ROOT = Path(__file__).resolve().parents[2]


def lq_of(gt: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """The demo's LQ: antialiased bicubic x``scale``, 8-bit rounded. ``gt`` [3,H,W] in [0,1]."""
    lq = F.interpolate(gt[None], scale_factor=1 / scale, mode="bicubic", antialias=True)[0]
    return (lq.clamp(0, 1) * 255).round() / 255


def scores(out: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    a, b = out.clamp(0, 1).permute(1, 2, 0).numpy(), gt.permute(1, 2, 0).numpy()
    return (
        float(peak_signal_noise_ratio(b, a, data_range=1.0)),
        float(structural_similarity(b, a, channel_axis=2, data_range=1.0)),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared/datasets/realsr/gt")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--grey", action="store_true")
    p.add_argument("--csv", type=Path)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = FiDeSRPipeline.from_pretrained(args.checkpoint, device="cpu")
    rows = []
    for path in list_images(args.images)[: args.n]:
        img = load_image(path)
        if args.grey:
            img = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).expand(3, -1, -1).clone()
        _, h, w = img.shape
        c = min(args.crop, h, w) // 8 * 8
        y, x = (h - c) // 2, (w - c) // 2
        gt = img[:, y : y + c, x : x + c]
        lq = lq_of(gt)
        with torch.no_grad():
            sr = pipe(lq[None], generator=torch.Generator().manual_seed(0)).sr[0].float().cpu()
        bic = F.interpolate(lq[None], size=gt.shape[-2:], mode="bicubic")[0]
        (sp, ss), (bp, bs) = scores(sr, gt), scores(bic, gt)
        rows.append(
            {"image": path.name, "sr_psnr": sp, "bicubic_psnr": bp, "sr_ssim": ss, "bicubic_ssim": bs}
        )
        print(f"{path.name:28s} SR {sp:6.2f} dB {ss:.4f} | bicubic {bp:6.2f} dB {bs:.4f} | {sp - bp:+.2f} dB")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
    ahead = sum(r["sr_psnr"] > r["bicubic_psnr"] for r in rows)
    print(
        f"mean over {len(rows)} ({'grey' if args.grey else 'colour'}, {c} px): SR {mean['sr_psnr']:.2f} dB / "
        f"{mean['sr_ssim']:.4f}, bicubic {mean['bicubic_psnr']:.2f} dB / {mean['bicubic_ssim']:.4f} "
        f"({mean['sr_psnr'] - mean['bicubic_psnr']:+.2f} dB); SR ahead on {ahead} of {len(rows)}"
    )
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
