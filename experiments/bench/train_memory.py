"""Peak GPU memory of FiDeSR training steps on the SD 2.1-base architecture, estimated without a GPU.

``train_step.py``'s module (random weights, the paper's losses) and configurations, run through
:func:`fidesr.memory.estimate_training_step` (fake tensors, CUDA's autocast policy, live bytes in 512 B
blocks: what ``torch.cuda.max_memory_allocated`` reports, less cuDNN / cuBLAS workspaces and fragmentation).
The calibration against the H200 measurement is in experiments/bench/README.md. For any Hydra configuration
use ``fidesr-memory`` instead.

    python experiments/bench/train_memory.py                        # all configurations, ~1-2 min on 2 cores
    python experiments/bench/train_memory.py --configs 24gib --batch 8 --size 512 --out rows.jsonl
    python experiments/bench/train_memory.py --configs paper --flops  # + FLOPs of the step and its parts

Each row gives the peak and what was live at the peak, by where it was allocated (weights, the module whose
forward made it, backward, optimizer).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from fidesr.memory import estimate_training_step, fake_gpu, materialize, training_batch
from fidesr.model import FiDeSRModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, apply_config, build_module, make_batch, make_step  # noqa: E402


def estimate(config: str, batch: int, size: int) -> dict:
    """Peak memory of one optimizer step of ``train_step.py``'s module in configuration ``config``."""
    cfg = CONFIGS[config]
    t0 = time.time()
    module = build_module(tiny=False, device=torch.device("meta"))  # shapes only; made fake in the estimate
    apply_config(module, cfg)
    est = estimate_training_step(module, functools.partial(training_batch, batch, size), cfg["autocast"])
    trained = sum(p.numel() for p in module.trainable_parameters())
    return {
        "name": f"train memory {config}",
        "batch": batch,
        "size": size,
        "estimated_peak_gib": round(est.peak_gib, 3),
        "peak_during": est.peak_during,
        "live_at_peak_gib": est.breakdown_gib(),
        "trained_params_M": round(trained / 1e6, 2),
        "estimate_s": round(time.time() - t0, 1),
        **{k: str(v).removeprefix("torch.") for k, v in cfg.items()},
    }


RESULTS = Path(__file__).resolve().parent / "results"


def measured_peak_gib(config: str, results: Path = RESULTS / "train.jsonl") -> float:
    """``torch.cuda.max_memory_allocated`` measured by ``train_step.py`` for ``config`` on a GPU (the rows in
    ``results/train.jsonl``, H200): the reference the estimates are checked against."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    peaks = [r["peak_gib"] for r in rows if r.get("name") == f"train step {config}" and "peak_gib" in r]
    if not peaks:
        raise KeyError(f"no GPU measurement of {config!r} in {results}")
    return float(peaks[-1])


@contextlib.contextmanager
def fake_module(config: str) -> Iterator[FiDeSRModule]:
    """``train_step.py``'s module in ``config``, on fake tensors (inside :func:`fidesr.memory.fake_gpu`)."""
    module = build_module(tiny=False, device=torch.device("meta"))
    apply_config(module, CONFIGS[config])
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    with fake_gpu():
        materialize(module, torch.device("cpu"))
        yield module


def steady_step(module: FiDeSRModule, config: str, batch: int, size: int) -> Callable[[], object]:
    """A training step of ``module`` after one untimed step (AdamW's state made, fixed prompts embedded)."""
    device = torch.device("cpu")
    step = make_step(module, make_batch(batch, size, device), CONFIGS[config]["autocast"], device)
    step()
    return step


def flops(config: str, batch: int, size: int) -> dict:
    """FLOPs (``torch.utils.flop_counter``) of one training step and of its parts' forward passes per image."""
    from torch.utils.flop_counter import FlopCounterMode

    autocast = CONFIGS[config]["autocast"]

    def count(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast("cpu", dtype=autocast):
            fn()
        return round(counter.get_total_flops() / 1e12, 3)

    with fake_module(config) as module:
        bb = module.backbone
        latent = size // bb.vae_scale_factor
        img, z = torch.empty(1, 3, size, size), torch.empty(1, bb.latent_channels, latent, latent)
        emb, t = torch.empty(1, 77, bb.unet.config.cross_attention_dim), torch.ones(1, dtype=torch.long)
        parts = {
            "vae_encoder": count(lambda: bb.vae.encode(img)),
            "unet": count(lambda: bb.unet(z, t, encoder_hidden_states=emb)),
            "vae_decoder": count(lambda: bb.vae.decode(z)),
            "lpips_pair": count(lambda: module.perceptual(img, img)),
        }
        step = steady_step(module, config, batch, size)  # as the roofline: the steady state
        counter = FlopCounterMode(display=False)
        with counter:
            step()
    return {
        "name": f"train flops {config}",
        "batch": batch,
        "size": size,
        "step_tflop": round(counter.get_total_flops() / 1e12, 3),
        "forward_tflop_per_image": parts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Compiled configurations are left out: Inductor plans its own buffers, which fake eager ops do not show.
    eager = [name for name, cfg in CONFIGS.items() if not cfg["compile"]]
    ap.add_argument("--configs", nargs="*", default=eager, choices=eager)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None, help="append JSON rows to this file")
    ap.add_argument("--flops", action="store_true", help="also count the FLOPs of a step and of its parts")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.flops:
        row = flops(args.configs[0], args.batch, args.size)
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **row}) + "\n")
    rows = []
    for name in args.configs:
        row = estimate(name, args.batch, args.size)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **row}) + "\n")
    print("\n| configuration | batch x px | estimated peak GiB | largest parts at the peak (GiB) |")
    print("| --- | --- | ---: | --- |")
    for r in rows:
        parts = ", ".join(f"{k} {v}" for k, v in list(r["live_at_peak_gib"].items())[:5])
        print(f"| {r['name'][13:]} | {r['batch']} x {r['size']} | {r['estimated_peak_gib']} | {parts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
