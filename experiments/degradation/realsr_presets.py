"""How strong are the degradation presets? Sampled parameters and LQ PSNR on the RealSR GT images.

For every GT image of ``../shared/datasets/realsr/gt`` (relative to the project root) and every preset, the
script draws the image's params exactly as ``fidesr-degrade --seed SEED`` does (generator seeded from the seed
and the file name), synthesises the x4 LQ, upsamples it bicubically to the GT size (as inference does), rounds
it to 8 bits and computes the PSNR against the GT on the Y channel (BT.601 as pyiqa/BasicSR:
``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with RGB in [0, 1], 0..255 scale, no border crop).

It prints the distribution of the sampled parameters per preset, the PSNR per preset (with two references: a
clean bicubic x4 round trip and RealSR's real LQ images when present), asserts that PiSA-SR's preset is milder
than OSEDiff's, and saves ``docs/figures/degradation_presets.png`` (GT crop | bicubic | osediff | pisasr).

    python experiments/degradation/realsr_presets.py [--seed 0] [--limit N] [--no-figure]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from fidesr.cli.degrade import image_seed
from fidesr.data.degradations import PRESETS, load_preset
from fidesr.data.degradations.kernels import KERNEL_TYPES
from fidesr.data.degradations.ops import RESIZE_MODES, quantize_8bit
from fidesr.data.imageio import list_images, load_image

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "figures" / "degradation_presets.png"


def y_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR on the BT.601 luma (pyiqa's ``test_y_channel``) of ``[3, H, W]`` images in [0, 1]."""
    w = torch.tensor([65.481, 128.553, 24.966]).view(3, 1, 1)
    ya, yb = 16 + (a * w).sum(0), 16 + (b * w).sum(0)
    mse = float(((ya - yb) ** 2).mean())
    return 10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))).item()


def upsample(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic x4 as at inference, rounded to 8 bits as a saved image would be."""
    return quantize_8bit(F.interpolate(lq, size=size, mode="bicubic", align_corners=False))


def quantiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    t = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
    return f"n={len(values):3d} mean {t.mean():6.2f} | min {q[0]:6.2f} q25 {q[1]:6.2f} med {q[2]:6.2f} q75 {q[3]:6.2f} max {q[4]:6.2f}"


def frac(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({100 * sum(flags) / max(len(flags), 1):.0f} %)"


def describe(preset: str, params: dict[str, torch.Tensor]) -> list[str]:
    """Readable distribution of the params actually drawn for the images."""
    p = {k: v.tolist() for k, v in params.items() if v.ndim == 1}
    lines = []
    if preset == "bicubic":
        lines.append(f"  noise sigma (0..255)  {quantiles(p['noise_sigma'])}")
        lines.append(f"  JPEG quality          {quantiles(p['jpeg_quality'])}")
        return lines
    for k in (1, 2):
        types = Counter(KERNEL_TYPES[t] for t in p[f"kernel{k}_type"])
        lines.append(f"  kernel{k} types        " + ", ".join(f"{n} {c}" for n, c in types.most_common()))
        gauss = [s for s, t in zip(p[f"kernel{k}_sigma_x"], p[f"kernel{k}_type"], strict=True) if t < 6]
        lines.append(f"  kernel{k} sigma_x      {quantiles(gauss)}")
        lines.append(f"  kernel{k} size         {quantiles([float(v) for v in p[f'kernel{k}_size']])}")
    lines.append(f"  second blur applied   {frac(p['blur2'])}")
    lines.append(f"  final sinc (not pulse) {frac([o > 0 for o in p['sinc_omega']])}")
    for k in (1, 2):
        g = p[f"noise{k}_gaussian"]
        lines.append(f"  stage {k} resize scale  {quantiles(p[f'resize{k}_scale'])}")
        modes = Counter(RESIZE_MODES[m] for m in p[f"resize{k}_mode"])
        lines.append(f"  stage {k} resize modes  " + ", ".join(f"{n} {c}" for n, c in sorted(modes.items())))
        lines.append(f"  stage {k} Gaussian noise {frac(g)}, grey noise {frac(p[f'noise{k}_gray'])}")
        sig = [s for s, is_g in zip(p[f"noise{k}_sigma"], g, strict=True) if is_g]
        poi = [s for s, is_g in zip(p[f"noise{k}_poisson"], g, strict=True) if not is_g]
        lines.append(f"  stage {k} Gaussian sigma {quantiles(sig)}")
        lines.append(f"  stage {k} Poisson scale  {quantiles(poi)}")
        label = "stage 1 JPEG quality  " if k == 1 else "final JPEG quality    "
        lines.append(f"  {label}{quantiles(p[f'jpeg{k}_quality'])}")
    lines.append(f"  final [resize+sinc] before JPEG {frac(p['final_resize_first'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=ROOT.parent / "shared" / "datasets" / "realsr" / "gt")
    parser.add_argument("--lq", type=Path, default=ROOT.parent / "shared" / "datasets" / "realsr" / "lq")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    files = list_images(args.gt)[: args.limit]
    print(
        f"# {len(files)} GT images from {args.gt}; seed {args.seed}; torch {torch.__version__}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    )
    gts = [load_image(f) for f in files]
    gts = [g[:, : g.shape[1] - g.shape[1] % 4, : g.shape[2] - g.shape[2] % 4] for g in gts]
    names = [f.name for f in files]

    psnr: dict[str, list[float]] = {}
    upsampled: dict[str, list[torch.Tensor]] = {}
    # Reference 1: clean bicubic x4 round trip (no noise, no JPEG) - the blur-only ceiling.
    psnr["clean bicubic x4"] = [
        y_psnr(
            upsample(F.interpolate(g[None], scale_factor=0.25, mode="bicubic", antialias=True), g.shape[1:])[
                0
            ],
            g,
        )
        for g in gts
    ]
    # Reference 2: RealSR's real LQ (camera at a shorter focal length), if the folder is there.
    real = [args.lq / n for n in names]
    if all(p.is_file() for p in real):
        vals = []
        for p, g in zip(real, gts, strict=True):
            lq = load_image(p)[None]
            vals.append(y_psnr(upsample(lq, g.shape[1:])[0], g))
        psnr["RealSR real LQ"] = vals

    for preset in PRESETS:
        deg = load_preset(preset, resize_back=False)
        all_params = [deg.sample(torch.Generator().manual_seed(image_seed(args.seed, n))) for n in names]
        t0 = time.perf_counter()
        vals, ups = [], []
        for i in range(0, len(gts), args.batch):
            # Same-size images batch; mixed sizes go one by one.
            chunk = list(range(i, min(i + args.batch, len(gts))))
            groups: dict[tuple[int, int], list[int]] = {}
            for j in chunk:
                groups.setdefault(tuple(gts[j].shape[1:]), []).append(j)
            for size, idx in groups.items():
                params = default_collate([all_params[j] for j in idx])
                with torch.no_grad():
                    lq = deg.apply(torch.stack([gts[j] for j in idx]), params)
                up = upsample(lq, size)
                for k, j in enumerate(idx):
                    vals.append((j, y_psnr(up[k], gts[j])))
                    ups.append((j, up[k]))
        psnr[preset] = [v for _, v in sorted(vals)]
        upsampled[preset] = [u for _, u in sorted(ups, key=lambda t: t[0])]
        elapsed = time.perf_counter() - t0
        print(f"\n== {preset}: {deg!r}\n  ({len(gts)} images degraded in {elapsed:.1f} s)")
        for line in describe(preset, default_collate(all_params)):
            print(line)

    print("\n# PSNR-Y (dB) of the bicubic-upsampled LQ against the GT")
    print(f"{'':20} {'mean':>7} {'std':>6} {'min':>7} {'median':>7} {'max':>7}")
    for key, vals in psnr.items():
        print(
            f"{key:20} {statistics.mean(vals):7.2f} {statistics.pstdev(vals):6.2f} {min(vals):7.2f} "
            f"{statistics.median(vals):7.2f} {max(vals):7.2f}"
        )
    milder = statistics.mean(psnr["pisasr"]) > statistics.mean(psnr["osediff"])
    wins = sum(a > b for a, b in zip(psnr["pisasr"], psnr["osediff"], strict=True))
    print(
        f"\nPiSA-SR milder than OSEDiff: {milder} (mean {statistics.mean(psnr['pisasr']):.2f} vs "
        f"{statistics.mean(psnr['osediff']):.2f} dB; higher PSNR on {wins}/{len(gts)} images)"
    )
    assert milder, "the PiSA-SR preset should be milder (higher LQ PSNR) than the OSEDiff preset"

    if not args.no_figure:
        save_figure(gts, upsampled, names)
        print(f"figure: {FIGURE.relative_to(ROOT)}")
    return 0


def save_figure(gts: list[torch.Tensor], ups: dict[str, list[torch.Tensor]], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [i for i in (3, 40, 77) if i < len(gts)] or [0]
    crop = 160
    cols = ["GT", "bicubic", "osediff", "pisasr"]
    fig, axes = plt.subplots(
        len(picks), len(cols), figsize=(2.4 * len(cols), 2.4 * len(picks)), squeeze=False
    )
    for r, i in enumerate(picks):
        g = gts[i]
        top, left = (g.shape[1] - crop) // 2, (g.shape[2] - crop) // 2
        for c, col in enumerate(cols):
            img = g if col == "GT" else ups[col][i]
            tile = img[:, top : top + crop, left : left + crop].permute(1, 2, 0).clamp(0, 1).numpy()
            ax = axes[r][c]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col if col == "GT" else f"{col} (LQ x4 bicubic)", fontsize=9)
            if c == 0:
                ax.set_ylabel(Path(names[i]).stem, fontsize=8)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
