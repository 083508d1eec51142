"""Peak GPU memory of a training step, estimated on a machine without a GPU.

The step runs on *fake* tensors (``torch._subclasses.FakeTensorMode``: every operator computes its output's
shape and dtype only, so SD 2.1-base at batch 8 x 512 px takes seconds and no memory), while a dispatch mode
adds up the bytes of every live tensor storage, rounded up to the CUDA caching allocator's 512 B blocks. The
peak of that sum is what ``torch.cuda.max_memory_allocated`` reports on a GPU, with two adjustments that make
the fake run behave as a CUDA one:

- CUDA autocast's cast policy. The tensors are fake *CPU* tensors (the autograd engine asks the CUDA driver
  about streams for CUDA tensors, even fake ones), and the operators whose CPU autocast policy differs from
  CUDA's (norms, softmax, exp, pow, sums, upsampling: those registered for AutocastCUDA and not for
  AutocastCPU in ``aten/src/ATen/autocast_mode.cpp``) get Python kernels on the AutocastCPU key with CUDA's
  policy while :func:`fake_gpu` is active. ``tests/test_memory.py`` compares the op-by-op dtypes with
  fake-CUDA autocast.
- attention as the fused kernel CUDA runs (output and log-sum-exp; no N^2 score matrix).

Not modelled: cuDNN / cuBLAS workspaces and allocator fragmentation (reserved minus allocated). Calibration:
the paper configuration (batch 8 x 512 px) estimates at 62.26 GiB; an H200 measured 62.41 GiB.
This module uses PyTorch internals (fake tensors, dispatch modes, ``torch.library`` kernels on an autocast
key) that the pinned torch is tested with; it is a planning tool and never runs in training.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

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
    """While a module named in ``names`` (qualified name -> label) runs forward, new storages get its label.
    The outermost named module wins: the UNet called by the distillation term counts as its teacher pass."""
    modules = dict(root.named_modules())
    stack: list[str] = []  # the labels in force before each named module still running
    handles = []
    for qual, label in names.items():
        m = modules[qual]

        def pre(_m, _args, label=label):
            stack.append(tracker.where)
            if len(stack) == 1:
                tracker.where = label

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
        attn_mask = (
            attn_mask.to(dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        )
    need_lse = query.requires_grad or key.requires_grad or value.requires_grad
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, need_lse, dropout_p, is_causal, scale=scale
    )[0]


# CUDA autocast's cast policy for the operators whose CPU autocast policy differs (PyTorch's
# aten/src/ATen/autocast_mode.cpp: ops registered for AutocastCUDA but not AutocastCPU). The estimator runs
# fake *CPU* tensors (the autograd engine wants a CUDA driver for CUDA tensors, even fake ones) under CPU
# autocast with these kernels added, so that every saved activation gets the dtype it has on a GPU.
# tests/test_memory.py checks the resulting forward trace against fake-CUDA autocast.
FP32 = (
    "acos",
    "asin",
    "cosh",
    "erfinv",
    "exp",
    "expm1",
    "log",
    "log10",
    "log1p",
    "log2",
    "reciprocal",
    "rsqrt",
    "sinh",
    "tan",
    "pow.Scalar",
    "pow.Tensor_Scalar",
    "pow.Tensor_Tensor",
    "softplus",
    "layer_norm",
    "native_layer_norm",
    "group_norm",
    "rms_norm",
    "frobenius_norm.dim",
    "nuclear_norm",
    "nuclear_norm.dim",
    "cosine_similarity",
    "dist",
    "pdist",
    "renorm",
    "logsumexp",
    "norm.Scalar",
    "norm.ScalarOpt_dim",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_nearest3d",
    "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d",
    "_upsample_nearest_exact3d",
    "upsample_linear1d",
    "upsample_bilinear2d",
    "_upsample_bilinear2d_aa",
    "upsample_trilinear3d",
    "upsample_bicubic2d",
    "_upsample_bicubic2d_aa",
)
FP32_UNLESS_DTYPE = (
    "softmax.int",
    "log_softmax.int",
    "cumprod",
    "cumsum",
    "linalg_vector_norm",
    "linalg_matrix_norm",
    "linalg_matrix_norm.str_ord",
    "sum",
    "sum.dim_IntList",
)
LOWER = ("convolution", "_convolution", "addmv", "addr", "chain_matmul", "einsum", "linalg_multi_dot", "mv")
PROMOTE = (
    "addcdiv",
    "addcmul",
    "atan2",
    "bilinear",
    "cross",
    "dot",
    "vdot",
    "index_put",
    "scatter_add",
    "tensordot",
)
HALF = (torch.float16, torch.bfloat16)


def _autocast_kernel(op, policy: str):
    def cast_all(args, kwargs, dtype):
        fn = lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
        return tree_map(fn, args), tree_map(fn, kwargs)

    def kernel(*args, **kwargs):
        floats = [
            x
            for x in tree_flatten((args, kwargs))[0]
            if isinstance(x, torch.Tensor) and x.is_floating_point()
        ]
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            if policy == "fp32":
                args, kwargs = cast_all(args, kwargs, torch.float32)
            elif (
                policy == "fp32_unless_dtype"
                and floats
                and floats[0].dtype in HALF
                and kwargs.get("dtype") is None
            ):
                kwargs = {**kwargs, "dtype": torch.float32}
            elif policy == "lower":
                args, kwargs = cast_all(args, kwargs, torch.get_autocast_dtype("cpu"))
            elif policy == "promote" and floats:
                args, kwargs = cast_all(
                    args, kwargs, functools.reduce(torch.promote_types, (x.dtype for x in floats))
                )
            return op(*args, **kwargs)

    return kernel


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """CPU autocast behaves as CUDA autocast while inside (Python kernels on the AutocastCPU key)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for names, policy in (
            (FP32, "fp32"),
            (FP32_UNLESS_DTYPE, "fp32_unless_dtype"),
            (LOWER, "lower"),
            (PROMOTE, "promote"),
        ):
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
                m._parameters[name] = nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=p.requires_grad
                )
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = torch.empty_like(b, device=device)


#: FiDeSRModule parts whose forward allocations are labelled separately (qualified name -> label).
PARTS = {
    "backbone.vae.encoder": "vae encoder",
    "backbone.vae.decoder": "vae decoder",
    "backbone.unet": "unet",
    "lrrb": "lrrb",
    "perceptual": "lpips",
    "distill": "distillation teacher",
    "backbone.text_encoder": "text encoder",
}


@dataclass
class MemoryEstimate:
    """The estimated peak and what was alive at it, by label (bytes)."""

    peak_bytes: int
    live_at_peak: dict[str, int] = field(default_factory=dict)
    peak_during: str = ""

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    def breakdown_gib(self, digits: int = 3) -> dict[str, float]:
        """Labels by decreasing size, in GiB (zero entries dropped)."""
        items = sorted(self.live_at_peak.items(), key=lambda kv: -kv[1])
        return {k: round(v / GiB, digits) for k, v in items if v}


def training_batch(batch_size: int, crop_size: int, device: torch.device) -> dict:
    """A training batch of the contract's shapes (docs/ARCHITECTURE.md): GT and upsampled LQ, tags."""
    gt = torch.empty(batch_size, 3, crop_size, crop_size, device=device)
    return {
        "gt": gt,
        "lq": torch.empty_like(gt),
        "prompt": ["a photo, detailed"] * batch_size,
        "name": [f"im{i}" for i in range(batch_size)],
    }


def estimate_training_step(
    module: nn.Module,
    batch: Callable[[torch.device], dict],
    autocast: torch.dtype | None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    clip: float | None = 1.0,
    labels: dict[str, str] = PARTS,
) -> MemoryEstimate:
    """Peak memory of an optimizer step of ``module`` (a ``FiDeSRModule`` built on the meta device).

    Two steps run (the optimizer's state exists from the first); the second one's peak is reported.
    ``batch(device)`` builds the batch, ``autocast`` is the mixed-precision dtype (None: float32),
    ``optimizer(module)`` makes the optimizer (default: ``module.configure_optimizers()``).
    The module's parameters are replaced by fake tensors: it is spent afterwards.
    """
    device = torch.device("cpu")  # fake CPU tensors standing in for CUDA ones (see fake_gpu)
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    with fake_gpu():
        materialize(module, device)
        opt = optimizer(module) if optimizer is not None else module.configure_optimizers()
        if isinstance(opt, dict):
            opt = opt["optimizer"]
        params = [p for group in opt.param_groups for p in group["params"]]
        tracker = LiveBytes()
        tracker.add_existing(module.parameters(), "weights")
        tracker.add_existing(module.buffers(), "weights")
        present = dict(module.named_modules())
        with tracker, label_modules(tracker, module, {k: v for k, v in labels.items() if k in present}):
            data = batch(device)
            for i in range(2):
                if i == 1:
                    tracker.reset_peak()
                tracker.where = "forward"
                with torch.autocast(
                    device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                ):
                    loss = module.training_step(data, 0)
                tracker.where = "backward"
                loss.backward()
                tracker.where = "optimizer"
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                del loss
    return MemoryEstimate(
        tracker.peak, {k: v for k, v in tracker.peak_by_label.items() if v}, tracker.peak_where
    )
