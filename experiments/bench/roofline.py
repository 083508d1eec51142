"""Roofline lower bounds of FiDeSR's training step and inference on an H200, computed without a GPU.

Every operator of the real computation (fake tensors, CUDA's autocast policy: :mod:`fidesr.memory`) gets the
time ``max(FLOPs / peak, bytes read and written / bandwidth)`` with the H200's datasheet figures; the sum is
a lower bound for eager GPU time (no kernel is faster than its roofline; launches, idle gaps and kernel
inefficiency come on top), and the split says how much is arithmetic and how much memory traffic.

    python experiments/bench/roofline.py --train paper 24gib --inference 1 8     # ~1.5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fidesr.memory import fake_gpu, materialize
from fidesr.pipeline import FiDeSRPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import build_backbone, random_lrrb  # noqa: E402
from train_memory import fake_module, steady_step  # noqa: E402

from fidesr.components.lfim import LatentFrequencyInjection  # noqa: E402

#: NVIDIA H200 SXM: dense fp16/bf16 tensor-core peak, TF32 peak, HBM3e bandwidth (datasheet figures).
H200 = {"half_flops": 989e12, "fp32_flops": 494e12, "bytes_per_s": 4.8e12}


class Roofline(TorchDispatchMode):
    """Per operator: FLOPs (``torch.utils.flop_counter``'s formulas: matmuls, convolutions, attention) and the
    bytes it reads and writes (tensor inputs + new outputs; views move nothing); its roofline time is
    ``max(FLOPs / peak, bytes / bandwidth)``. Summed: a lower bound for the GPU time of eager execution,
    with the operator count that the CPU has to dispatch."""

    def __init__(self, machine: dict[str, float]) -> None:
        super().__init__()
        self.machine = machine
        self.seconds: Counter[str] = Counter()  # "compute" (FLOP-bound ops) / "memory" (bandwidth-bound ops)
        self.by_op: Counter[str] = Counter()  # roofline seconds per operator
        self.ops = 0
        self.flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        seen = {t.untyped_storage()._cdata for t in inputs}
        new = [t for t in outputs if t.untyped_storage()._cdata not in seen]
        if not new and func.overloadpacket not in flop_registry and torch.Tag.inplace_view not in func.tags:
            if all(t.untyped_storage()._cdata in seen for t in outputs) and not func._schema.is_mutable:
                return out  # a view or metadata op: no kernel
        nbytes = sum(t.numel() * t.element_size() for t in inputs + new)
        flops = 0.0
        if func.overloadpacket in flop_registry:
            flops = flop_registry[func.overloadpacket](*args, **(kwargs or {}), out_val=out)
        half = any(t.dtype in (torch.float16, torch.bfloat16) for t in inputs)
        peak = self.machine["half_flops" if half else "fp32_flops"]
        compute, memory = flops / peak, nbytes / self.machine["bytes_per_s"]
        self.seconds["compute" if compute >= memory else "memory"] += max(compute, memory)
        self.by_op[func.overloadpacket.__name__] += max(compute, memory)
        self.ops += 1
        self.flops += flops
        return out


def train_roofline(config: str, batch: int, size: int, machine: dict[str, float] = H200) -> dict:
    """Per step: the second of two training steps of ``train_step.py``'s module (AdamW's state exists)."""
    with fake_module(config) as module:
        step = steady_step(module, config, batch, size)
        counter = Roofline(machine)
        with counter:
            step()
    return result(f"train roofline {config}", counter, 1, batch=batch, size=size)  # per step


def result(name: str, counter: Roofline, per: int, **info) -> dict:
    """A row: times in ms and TFLOP per ``per`` (1: the whole call; the batch: per image)."""
    total = sum(counter.seconds.values())
    return {
        "name": name,
        **info,
        "machine": "H200 datasheet",
        "roofline_ms": round(1e3 * total / per, 2),
        "flop_bound_ms": round(1e3 * counter.seconds["compute"] / per, 2),
        "bandwidth_bound_ms": round(1e3 * counter.seconds["memory"] / per, 2),
        "tflop": round(counter.flops / 1e12 / per, 3),
        "kernels": counter.ops,
        "top_ops_ms": {k: round(v * 1e3 / per, 2) for k, v in counter.by_op.most_common(6)},
    }


def inference_roofline(
    batch: int, lq_size: int = 128, dtype: torch.dtype = torch.bfloat16, machine: dict[str, float] = H200
) -> dict:
    """Per image: ``inference.py``'s FiDeSR pipeline (LoRA merged, LRRB, LFIM, AdaIN), LQ ``lq_size`` -> x4."""
    meta = torch.device("meta")
    backbone = build_backbone(False, meta, lora_rank=8, lora_alpha=8)
    # The pipeline as inference.py builds it, on the meta device (shapes only), then made fake.
    pipe = FiDeSRPipeline.for_inference(
        backbone,
        random_lrrb(meta),
        LatentFrequencyInjection(),
        device=meta,
        dtype=dtype,
        offload_text_encoder=False,
        min_lq_size=lq_size,
    )
    # The finite-output check reads values, which fake tensors do not have; it is no network's FLOPs.
    pipe.check_finite = False
    with fake_gpu(), torch.no_grad():
        for module in (pipe.backbone, pipe.lrrb, pipe.lfim):
            materialize(module, torch.device("cpu"))
        lq = torch.empty(batch, 3, lq_size, lq_size)
        pipe(lq)  # the empty prompt's embedding is cached from here on, as in a served model
        counter = Roofline(machine)
        with counter:
            pipe(lq)
    return result(f"inference roofline bf16, {lq_size} -> {4 * lq_size} px", counter, batch, batch=batch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="*", default=["paper"], help="train_step.py configurations")
    ap.add_argument("--inference", nargs="*", type=int, default=[1, 8], help="inference batch sizes")
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--size", type=int, default=512, help="training crop")
    ap.add_argument("--out", type=Path, default=None, help="append JSON rows to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [train_roofline(c, args.batch, args.size) for c in args.train]
    rows += [inference_roofline(b) for b in args.inference]
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(json.dumps({"date": time.strftime("%Y-%m-%d"), **row}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
