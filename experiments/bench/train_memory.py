"""Peak GPU memory of a FiDeSR training step, estimated on a machine without a GPU.

The real training step (``FiDeSRModule.training_step``, backward, gradient clipping, AdamW) runs on the SD
2.1-base architecture at batch 8 x 512 px under ``FakeTensorMode`` with fake CUDA tensors: every operator
runs its shape/dtype rule only (seconds, no FLOPs, no GPU), CUDA autocast applies its real cast policy, and a
dispatch mode counts the bytes of every tensor storage from its creation to its release (rounded up to the
CUDA caching allocator's 512 B blocks). The peak of those live bytes is what ``torch.cuda.max_memory_allocated``
reports, less what this model cannot see: cuDNN / cuBLAS workspaces and allocator block splitting (the
calibration against the H200 measurement is in experiments/bench/README.md). Attention runs as the fused
memory-efficient kernel that CUDA picks (no N^2 score matrix); off a GPU PyTorch would otherwise model the
math fallback.

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
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CONFIGS, apply_config, build_module, make_batch, make_step  # noqa: E402

GiB = 2**30
BLOCK = 512  # the CUDA caching allocator rounds every allocation up to 512 B


def _round(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages produced by operators; keeps the peak and its breakdown.

    ``where`` labels new storages (the innermost tracked module, or a phase set by the caller); the breakdown
    at the peak is by label. Storages that existed before (weights) are added with :meth:`add_existing`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0
        self.by_label: Counter[str] = Counter()
        self.peak_by_label: dict[str, int] = {}
        self.peak_where = ""
        self.where = "setup"

    def _add(self, storage: torch.UntypedStorage, label: str) -> None:
        if storage in self.seen:
            return
        nbytes = _round(storage.nbytes())
        self.seen[storage] = nbytes
        self.live += nbytes
        self.by_label[label] += nbytes
        weakref.finalize(storage, self._free, nbytes, label)
        if self.live > self.peak:
            self.peak, self.peak_by_label, self.peak_where = self.live, dict(self.by_label), label

    def _free(self, nbytes: int, label: str) -> None:
        self.live -= nbytes
        self.by_label[label] -= nbytes

    def add_existing(self, tensors: Iterator[torch.Tensor], label: str) -> None:
        for t in tensors:
            self._add(t.untyped_storage(), label)

    def reset_peak(self) -> None:
        self.peak, self.peak_by_label, self.peak_where = self.live, dict(self.by_label), self.where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage(), self.where)
        return out


@contextlib.contextmanager
def label_modules(tracker: LiveBytes, root: nn.Module, names: dict[str, str]) -> Iterator[None]:
    """While a module named in ``names`` (qualified name -> label) runs forward, new storages get its label
    (the innermost one wins; CSD's teacher pass is labelled by the CSD module around the UNet)."""
    modules = dict(root.named_modules())
    stack: list[str] = []
    handles = []
    for qual, label in names.items():
        m = modules[qual]

        def pre(_m, _args, label=label):
            stack.append(tracker.where)
            tracker.where = label if not tracker.where.startswith("csd") else tracker.where

        def post(_m, _args, _out):
            tracker.where = stack.pop()

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """``F.scaled_dot_product_attention`` as the memory-efficient kernel CUDA uses (output + logsumexp only).

    Under autocast the inputs are cast the way SDPA's autocast rule casts them."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        query, key, value = (x.to(dtype) for x in (query, key, value))
        attn_mask = attn_mask.to(dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    need_lse = query.requires_grad or key.requires_grad or value.requires_grad
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, need_lse, dropout_p, is_causal, scale=scale
    )[0]


# CUDA autocast's cast policy for the operators whose CPU autocast policy differs (PyTorch's
# aten/src/ATen/autocast_mode.cpp: ops registered for AutocastCUDA but not AutocastCPU). The estimator runs
# fake *CPU* tensors (the autograd engine wants a CUDA driver for CUDA tensors, even fake ones) under CPU
# autocast with these kernels added, so that every saved activation gets the dtype it has on a GPU.
# tests/bench/test_train_memory.py checks the resulting forward trace against fake-CUDA autocast.
FP32 = ("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log1p", "log2", "reciprocal", "rsqrt",
        "sinh", "tan", "pow.Scalar", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "softplus", "layer_norm",
        "native_layer_norm", "group_norm", "rms_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
        "cosine_similarity", "dist", "pdist", "renorm", "logsumexp", "norm.Scalar", "norm.ScalarOpt_dim",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
        "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa")  # fmt: skip
FP32_UNLESS_DTYPE = ("softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm", "linalg_matrix_norm",
                     "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList")  # fmt: skip
LOWER = ("convolution", "_convolution", "addmv", "addr", "chain_matmul", "einsum", "linalg_multi_dot", "mv")
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "index_put", "scatter_add", "tensordot")
HALF = (torch.float16, torch.bfloat16)


def _autocast_kernel(op, policy: str):
    def cast_all(args, kwargs, dtype):
        fn = lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
        return tree_map(fn, args), tree_map(fn, kwargs)

    def kernel(*args, **kwargs):
        floats = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor) and x.is_floating_point()]
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            if policy == "fp32":
                args, kwargs = cast_all(args, kwargs, torch.float32)
            elif policy == "fp32_unless_dtype" and floats and floats[0].dtype in HALF and kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
            elif policy == "lower":
                args, kwargs = cast_all(args, kwargs, torch.get_autocast_dtype("cpu"))
            elif policy == "promote" and floats:
                args, kwargs = cast_all(args, kwargs, functools.reduce(torch.promote_types, (x.dtype for x in floats)))
            return op(*args, **kwargs)

    return kernel


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """CPU autocast behaves as CUDA autocast while inside (Python kernels on the AutocastCPU key)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for names, policy in ((FP32, "fp32"), (FP32_UNLESS_DTYPE, "fp32_unless_dtype"), (LOWER, "lower"),
                              (PROMOTE, "promote")):  # fmt: skip
            for name in names:
                base, _, overload = name.partition(".")
                op = getattr(getattr(torch.ops.aten, base), overload or "default")
                lib.impl(name, _autocast_kernel(op, policy), "AutocastCPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def fake_gpu() -> Iterator[FakeTensorMode]:
    """Fake CPU tensors that behave as CUDA ones for memory: CUDA's autocast policy and fused attention."""
    try:
        with (
            FakeTensorMode(allow_non_fake_inputs=True) as mode,
            cuda_autocast_policy(),
            mock.patch.object(F, "scaled_dot_product_attention", fused_attention),
        ):
            yield mode
    finally:
        clear_caches()


def clear_caches() -> None:
    """Empty fidesr's memoised functions (e.g. DAW's constant kernels): they would hand fake tensors made
    in here to real code later in the same process."""
    for name, module in list(sys.modules.items()):
        if name == "fidesr" or name.startswith("fidesr."):
            for obj in vars(module).values():
                if callable(getattr(obj, "cache_clear", None)):
                    obj.cache_clear()


def materialize(module: nn.Module, device: torch.device) -> None:
    """Replace the meta parameters and buffers of ``module`` by (fake) tensors of the same shape on ``device``."""
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = torch.empty_like(b, device=device)


def estimate(config: str, batch: int, size: int) -> dict:
    """Peak live bytes of one optimizer step (the second one: AdamW's states exist from the first)."""
    cfg = CONFIGS[config]
    device = torch.device("cpu")  # fake CPU tensors standing in for CUDA ones (see fake_gpu)
    t0 = time.time()
    # Built on the meta device (shapes only), then every tensor is replaced by a fake CUDA one: building in
    # fake mode directly fails (constants made by torch.tensor() want a driver; Module.to refuses to swap).
    module = build_module(tiny=False, device=torch.device("meta"))
    apply_config(module, cfg)
    # A CUDA generator needs a driver; the draws themselves do not matter here.
    module.step_generator = lambda device, stream=0: None
    with fake_gpu():
        materialize(module, device)
        tracker = LiveBytes()
        tracker.add_existing(module.parameters(), "weights")
        tracker.add_existing(module.buffers(), "weights")
        with tracker:
            data = make_batch(batch, size, device)
            step = make_step(module, data, cfg["autocast"], device, scaler=False)
            names = {"backbone.vae.encoder": "vae encoder", "backbone.vae.decoder": "vae decoder",
                     "backbone.unet": "unet", "lrrb": "lrrb", "perceptual": "lpips", "csd": "csd teacher",
                     "backbone.text_encoder": "text encoder"}  # fmt: skip
            with label_modules(tracker, module, names):
                for i in range(2):
                    if i == 1:
                        tracker.reset_peak()
                    tracker.where = "forward"
                    step(phases=lambda phase: setattr(tracker, "where", phase))
    trained = sum(p.numel() for p in module.trainable_parameters())
    breakdown = {k: round(v / GiB, 3) for k, v in sorted(tracker.peak_by_label.items(), key=lambda kv: -kv[1]) if v}
    return {
        "name": f"train memory {config}", "batch": batch, "size": size, "estimated_peak_gib": round(tracker.peak / GiB, 3),
        "peak_during": tracker.peak_where, "live_at_peak_gib": breakdown, "trained_params_M": round(trained / 1e6, 2),
        "estimate_s": round(time.time() - t0, 1), **{k: str(v).removeprefix("torch.") for k, v in cfg.items()},
    }  # fmt: skip


def flops(config: str, batch: int, size: int) -> dict:
    """FLOPs (``torch.utils.flop_counter``) of one training step and of its parts' forward passes per image."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = CONFIGS[config]
    module = build_module(tiny=False, device=torch.device("meta"))
    apply_config(module, cfg)
    module.step_generator = lambda device, stream=0: None
    device, bb = torch.device("cpu"), module.backbone
    latent = size // bb.vae_scale_factor

    def count(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast(device.type, dtype=cfg["autocast"]):
            fn()
        return round(counter.get_total_flops() / 1e12, 3)

    with fake_gpu():
        materialize(module, device)
        img, z = torch.empty(1, 3, size, size), torch.empty(1, bb.latent_channels, latent, latent)
        emb, t = torch.empty(1, 77, bb.unet.config.cross_attention_dim), torch.ones(1, dtype=torch.long)
        parts = {
            "vae_encoder": count(lambda: bb.vae.encode(img)),
            "unet": count(lambda: bb.unet(z, t, encoder_hidden_states=emb)),
            "vae_decoder": count(lambda: bb.vae.decode(z)),
            "lpips_pair": count(lambda: module.perceptual(img, img)),
        }
        step = make_step(module, make_batch(batch, size, device), cfg["autocast"], device, scaler=False)
        counter = FlopCounterMode(display=False)
        with counter:
            step()
    return {"name": f"train flops {config}", "batch": batch, "size": size,
            "step_tflop": round(counter.get_total_flops() / 1e12, 2), "forward_tflop_per_image": parts}  # fmt: skip


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
