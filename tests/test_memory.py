"""fidesr.memory: byte counting by hand, the CUDA autocast emulation against fake-CUDA autocast, no leaks of
fake tensors into later real code."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fidesr import memory


def test_live_bytes_by_hand():
    with FakeTensorMode():
        tracker = memory.LiveBytes()
        with tracker:
            a = torch.empty(1000)  # 4000 B -> one 4096 B block
            b = a * 2  # another 4096
            v = b.view(10, 100)  # a view: no new storage
            tracker.where = "second"
            c = torch.empty(10, dtype=torch.float16)  # 20 B -> 512
            assert tracker.live == 4096 + 4096 + 512
            del a
            assert tracker.live == 4096 + 512 and tracker.peak == 4096 + 4096 + 512
            assert tracker.peak_by_label == {"setup": 8192, "second": 512}
            tracker.reset_peak()
            assert tracker.peak == 4096 + 512
        del b, v, c
        assert tracker.live == 0


class _Block(nn.Module):
    """The op mix of the SD UNet / VAE / LPIPS: norms, activations, convolutions, attention, resampling."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, 16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.ln = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.silu(self.norm(x)))
        tokens = self.ln(h.flatten(2).transpose(1, 2))
        q, k, v = (
            t.unflatten(-1, (2, 8)).transpose(1, 2) for t in self.proj(tokens).chunk(3, dim=-1)
        )  # 2 heads
        a = F.scaled_dot_product_attention(q, k, v).softmax(-1).transpose(1, 2).flatten(2).transpose(1, 2)
        a = a.reshape_as(h)
        up = F.interpolate(h + a, scale_factor=2, mode="nearest") + F.interpolate(
            h, scale_factor=2, mode="bilinear"
        )
        return up.pow(2).sum(dim=(2, 3)).exp() + torch.cat([up.mean((2, 3)), x.float().mean((2, 3))], 1).sum(
            1, True
        )


class _Trace(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[str, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not torch.ops.prim.device.default:
            self.ops.append(
                (str(func), tuple(str(t.dtype) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
            )
        return out


def _forward_trace(device: str, dtype: torch.dtype) -> list:
    torch.manual_seed(0)
    block = _Block()
    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        if device == "cuda":  # the real CUDA autocast policy; forward only, which needs no driver
            stack.enter_context(mock.patch("torch.cuda.is_available", return_value=True))
            stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
            stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", memory.fused_attention))
        else:
            stack.enter_context(memory.fake_gpu())
        memory.materialize(block, torch.device(device))
        x = torch.empty(2, 16, 8, 8, device=device)
        trace = _Trace()
        with trace, torch.autocast(device, dtype=dtype):
            block(x)
    return trace.ops


def _drop_softmax_casts(ops: list) -> list:
    return [
        op
        for i, op in enumerate(ops)
        if not (op[0] == "aten._to_copy.default" and ops[i + 1][0] == "aten._softmax.default")
    ]


@pytest.mark.skipif(
    not torch.backends.cuda.is_built(), reason="needs a CUDA build of torch (fake CUDA tensors)"
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_emulation_casts_as_cuda_autocast(dtype):
    """Op by op, the emulated CPU autocast yields the dtypes CUDA autocast yields (what decides the bytes
    of every saved activation); plain CPU autocast does not (it keeps norms and exp in half precision)."""
    # softmax(x, dtype=float32) of fp16 lowers to one _softmax(half_to_float) on CUDA, to a cast + _softmax
    # on the CPU: the same result, plus a transient copy (freed at once, not saved for backward).
    cuda, emulated = (_drop_softmax_casts(_forward_trace(d, dtype)) for d in ("cuda", "cpu"))
    assert [op for op in cuda if "group_norm" in op[0]][0][1][0] == "torch.float32"
    assert emulated == cuda
    with FakeTensorMode(), torch.autocast("cpu", dtype=dtype):
        x = torch.empty(2, 16, 8, 8, dtype=dtype)
        assert F.group_norm(x, 4).dtype == dtype  # the CPU policy the emulation replaces
    with FakeTensorMode(), memory.cuda_autocast_policy(), torch.autocast("cpu", dtype=dtype):
        assert F.group_norm(torch.empty(2, 16, 8, 8, dtype=dtype), 4).dtype == torch.float32
    with FakeTensorMode(), torch.autocast("cpu", dtype=dtype):  # the kernels are gone after the block
        assert F.group_norm(torch.empty(2, 16, 8, 8, dtype=dtype), 4).dtype == dtype


def test_fake_run_leaves_no_fake_tensor_in_fidesr_caches():
    from fidesr.components.daw import box3

    with memory.fake_gpu():
        box3(torch.zeros(1, 1, 4, 4))  # memoises DAW's box kernel, as a fake tensor in here
    out = box3(torch.ones(1, 1, 4, 4))
    assert not isinstance(out, torch._subclasses.FakeTensor)
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))
