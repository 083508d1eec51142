"""Throughput of the degradation presets: batched ``apply`` vs a per-image loop of the same ops.

The per-image loop calls ``apply`` on one image at a time, which is how reference implementations (OSEDiff's
and SeeSR's ``RealESRGAN_degradation.degrade_process``) run the whole pipeline inside data-loader workers.
Both paths get identical params and inputs; their outputs are compared as well.

    python experiments/bench/degradation.py            # full: batch 8 and 16, 5 repeats (~ 2-3 min on 2 CPU)
    python experiments/bench/degradation.py --quick    # batch 8, 3 repeats (< 1 min)

Prints medians (seconds per batch, images/s) and the ratio loop / batched of the medians (and of the minima,
which resist load from other processes better) per preset, batch and device.
Timings on a shared machine are noisy: the two paths are interleaved within each repeat and the load average
is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from fidesr.data.degradations import load_preset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gt(b: int, size: int, device: torch.device) -> torch.Tensor:
    """Smooth random images (natural-image-like spectrum is not needed for timing, values in [0, 1])."""
    x = torch.rand(b, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(x, size=(size, size), mode="bicubic").clamp(0, 1)
    x = x + 0.05 * torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))
    return x.clamp(0, 1).to(device)


def bench(preset: str, batch: int, size: int, repeats: int, device: torch.device) -> dict[str, float]:
    deg = load_preset(preset, resize_back=True)
    params = default_collate([deg.sample(torch.Generator().manual_seed(1000 + i)) for i in range(batch)])
    params = {k: v.to(device) for k, v in params.items()}
    gt = _gt(batch, size, device)
    singles = [{k: v[i : i + 1] for k, v in params.items()} for i in range(batch)]

    def batched() -> torch.Tensor:
        return deg.apply(gt, params)

    def loop() -> torch.Tensor:
        return torch.cat([deg.apply(gt[i : i + 1], singles[i]) for i in range(batch)])

    with torch.no_grad():
        out_b, out_l = batched(), loop()  # warm-up (allocator, oneDNN primitives, CUDA context)
        diff = (out_b - out_l).abs()
        times: dict[str, list[float]] = {"batched": [], "loop": []}
        for r in range(repeats):
            order = ("batched", "loop") if r % 2 == 0 else ("loop", "batched")  # interleave against drift
            for name in order:
                fn = batched if name == "batched" else loop
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    tb, tl = statistics.median(times["batched"]), statistics.median(times["loop"])
    mb, ml = min(times["batched"]), min(times["loop"])
    return {
        "ratio_min": ml / mb,
        "batched_s": tb,
        "loop_s": tl,
        "batched_ips": batch / tb,
        "loop_ips": batch / tl,
        "ratio": tl / tb,
        "max_diff_255": float(diff.max()) * 255,
        "frac_diff": float((diff > 0).float().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 only, 3 repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--size", type=int, default=512, help="GT size in pixels (default 512)")
    parser.add_argument("--presets", nargs="+", default=["osediff", "pisasr", "bicubic"])
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU runs (GPU only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = args.batches or ([8] if args.quick else [8, 16])
    repeats = args.repeats or (3 if args.quick else 5)
    devices = [] if args.no_cpu else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}"
    )
    if torch.cuda.is_available():
        print(f"# GPU: {torch.cuda.get_device_name(0)}")
    print(f"# GT {args.size}px, resize_back=True, {repeats} repeats, medians")
    header = f"{'preset':8} {'device':6} {'batch':>5} {'batched s':>10} {'img/s':>8} {'loop s':>9} {'img/s':>8} {'ratio':>6} {'(min)':>6}  equal?"
    print(header)
    for device in devices:
        for preset in args.presets:
            for batch in batches:
                r = bench(preset, batch, args.size, repeats, device)
                eq = (
                    "bit-identical"
                    if r["max_diff_255"] == 0
                    else f"max {r['max_diff_255']:.2f}/255 on {r['frac_diff']:.1e}"
                )
                print(
                    f"{preset:8} {device.type:6} {batch:>5} {r['batched_s']:>10.3f} {r['batched_ips']:>8.2f} "
                    f"{r['loop_s']:>9.3f} {r['loop_ips']:>8.2f} {r['ratio']:>6.2f} {r['ratio_min']:>6.2f}  {eq}",
                    flush=True,
                )
    print(f"# load avg at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
