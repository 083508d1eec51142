"""LRRB: parameter count, zero init, official state-dict layout, forward vs. a functional reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fidesr.components.lrrb import LatentResidualRefinementBlock


def official_shapes(c: int = 4, mid: int = 64, growth: int = 32, blocks: int = 3) -> dict[str, tuple]:
    """Key -> shape of the official ``LRRB(in_ch=2c, mid_ch, growth)`` state dict, written out."""
    shapes = {"in_conv.weight": (mid, 2 * c, 1, 1), "in_conv.bias": (mid,)}
    for b in range(1, blocks + 1):
        for k in range(1, 6):
            cin = mid + (k - 1) * growth
            cout = growth if k < 5 else mid
            shapes[f"db{b}.conv{k}.weight"] = (cout, cin, 3, 3)
            shapes[f"db{b}.conv{k}.bias"] = (cout,)
    shapes["out_conv.weight"] = (c, mid, 1, 1)
    shapes["out_conv.bias"] = (c,)
    return shapes


def random_official_sd(seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(s, generator=g) for k, s in official_shapes(**kw).items()}


def reference_forward(
    sd: dict[str, torch.Tensor], z: torch.Tensor, r: torch.Tensor, blocks: int = 3
) -> torch.Tensor:
    """Independent functional LRRB straight from the official description."""

    def conv(x, name, pad):
        return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=pad)

    f = conv(torch.cat([z, r], 1), "in_conv", 0)
    for b in range(1, blocks + 1):
        x1 = F.silu(conv(f, f"db{b}.conv1", 1))
        x2 = F.silu(conv(torch.cat([f, x1], 1), f"db{b}.conv2", 1))
        x3 = F.silu(conv(torch.cat([f, x1, x2], 1), f"db{b}.conv3", 1))
        x4 = F.silu(conv(torch.cat([f, x1, x2, x3], 1), f"db{b}.conv4", 1))
        x5 = conv(torch.cat([f, x1, x2, x3, x4], 1), f"db{b}.conv5", 1)
        f = f + 0.2 * x5
    return conv(f, "out_conv", 0)


def inputs(seed: int = 1, b: int = 2, h: int = 12, w: int = 10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, h, w, generator=g), torch.randn(b, 4, h, w, generator=g)


def test_param_count_default():
    m = LatentResidualRefinementBlock()
    assert sum(p.numel() for p in m.parameters()) == 720_260
    assert sum(math.prod(s) for s in official_shapes().values()) == 720_260


def test_state_dict_keys_and_shapes_equal_official():
    sd = LatentResidualRefinementBlock().state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_shapes()


def test_delta_zero_at_init():
    torch.manual_seed(0)
    m = LatentResidualRefinementBlock()
    z, r = inputs()
    delta = m(z, r)
    assert delta.shape == r.shape
    assert torch.equal(delta, torch.zeros_like(r))
    for b in m.blocks:
        assert torch.count_nonzero(b.conv5.weight) == 0 and torch.count_nonzero(b.conv5.bias) == 0
        assert torch.count_nonzero(b.conv1.weight) > 0  # the others keep PyTorch's default init


def test_official_state_dict_loads_and_matches_reference():
    sd = random_official_sd(seed=3)
    m = LatentResidualRefinementBlock()
    m.load_official_state_dict(sd)
    z, r = inputs(seed=4)
    out = m(z, r)
    assert out.abs().max() > 1e-3  # the loaded (non-zero) conv5/out_conv change the output
    torch.testing.assert_close(out, reference_forward(sd, z, r), atol=1e-5, rtol=1e-5)
    # a different state dict gives a different output (the weights really are used)
    m.load_official_state_dict(random_official_sd(seed=5))
    assert not torch.allclose(m(z, r), out, atol=1e-4)


def test_official_checkpoint_wrappers_load():
    sd = random_official_sd(seed=6)
    z, r = inputs(seed=7)
    ref = reference_forward(sd, z, r)
    for wrapped in (
        {"lrrb_state_dict": sd, "lora_rank_unet": 8},
        {f"module.{k}": v for k, v in sd.items()},
        {f"lrrb.{k}": v for k, v in sd.items()},
    ):
        m = LatentResidualRefinementBlock()
        m.load_official_state_dict(wrapped)
        torch.testing.assert_close(m(z, r), ref, atol=1e-5, rtol=1e-5)


def test_official_load_rejects_bad_layout():
    sd = random_official_sd()
    m = LatentResidualRefinementBlock()
    missing = dict(sd)
    del missing["db2.conv3.weight"]
    with pytest.raises(RuntimeError):
        m.load_official_state_dict(missing)
    bad = dict(sd)
    bad["out_conv.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(RuntimeError):
        m.load_official_state_dict(bad)


def test_gradient_flow_from_zero_init():
    """Step 1: only out_conv gets a gradient (everything upstream is multiplied by its zero weight).
    After one SGD step conv5 gets one, after two every parameter does: zero-init does not block learning."""
    torch.manual_seed(0)
    m = LatentResidualRefinementBlock()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    z, r = inputs(seed=8)
    target = torch.randn(r.shape, generator=torch.Generator().manual_seed(9))

    def step():
        opt.zero_grad()
        ((m(z, r) - target) ** 2).mean().backward()
        grads = {n: p.grad.abs().sum().item() for n, p in m.named_parameters()}
        opt.step()
        return grads

    g1 = step()
    assert g1["out_conv.weight"] > 0 and g1["out_conv.bias"] > 0
    assert all(v == 0 for n, v in g1.items() if not n.startswith("out_conv"))
    g2 = step()
    assert all(g2[f"db{b}.conv5.weight"] > 0 and g2[f"db{b}.conv5.bias"] > 0 for b in (1, 2, 3))
    g3 = step()
    assert all(v > 0 for v in g3.values()), [n for n, v in g3.items() if v == 0]


def test_configurable_sizes():
    m = LatentResidualRefinementBlock(
        latent_channels=2, mid_channels=16, growth=8, num_blocks=2, res_scale=0.5
    )
    assert [k for k in m.state_dict() if k.startswith("db")][-1] == "db2.conv5.bias"
    z = torch.randn(1, 2, 5, 7)
    assert m(z, z).shape == (1, 2, 5, 7)
    with pytest.raises(ValueError):
        LatentResidualRefinementBlock(num_blocks=0)
