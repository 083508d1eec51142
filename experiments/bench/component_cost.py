"""Added cost per training step of DAW, LRRB and CSD on the demo backbone (CPU by default).

    python experiments/bench/component_cost.py [--steps 20] [--batch 4] [--crop 64] [--threads 2]

Times forward + backward + optimizer step of FiDeSRModule.training_step (median over --steps after 3
warm-up steps) for the full model and with each component switched off, and prints the difference.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate


def build(overrides: list[str]):
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=["experiment=demo", "paths.output_dir=/tmp/bench", *overrides]
        )
    return instantiate(cfg.model)


def time_steps(model, batch: dict, steps: int) -> float:
    model.log_dict = lambda *a, **k: None  # no Trainer here: logging is not what is timed
    model.log = lambda *a, **k: None
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        loss = model.training_step(batch, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(args.batch, 3, args.crop, args.crop, generator=g)
    batch = {"gt": gt, "lq": gt.clone(), "prompt": [""] * args.batch, "name": ["x"] * args.batch}
    # DAW is timed with its schedule running (alpha > 0): warm-up 0 makes it active from step 0.
    configs = {
        "full (LRRB + DAW + CSD)": ["daw.warmup_steps=0", "daw.ramp_steps=1"],
        "without DAW": ["daw=off"],
        "without LRRB": ["lrrb=off", "daw.warmup_steps=0", "daw.ramp_steps=1"],
        "without CSD": ["distill=off", "daw.warmup_steps=0", "daw.ramp_steps=1"],
        "plain (no LRRB, DAW, CSD)": ["daw=off", "lrrb=off", "distill=off"],
    }
    results = {name: time_steps(build(ov), batch, args.steps) for name, ov in configs.items()}
    full = results["full (LRRB + DAW + CSD)"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    print(f"demo backbone, batch {args.batch} x {args.crop} px, median of {args.steps} steps\n")
    print("| configuration | s/step | added by the component |")
    print("|---|---:|---:|")
    for name, sec in results.items():
        added = (
            ""
            if name.startswith(("full", "plain"))
            else f"{full - sec:+.3f} s ({(full - sec) / sec * 100:+.0f} %)"
        )
        print(f"| {name} | {sec:.3f} | {added} |")


if __name__ == "__main__":
    main()
