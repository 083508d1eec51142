"""CSD: DDPM noising, the loss value and its gradient, and the sampling module with a stand-in teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from fidesr.components.daw import daw_weights
from fidesr.components.distill import csd


def sd21_scheduler() -> DDPMScheduler:
    # SD 2.1-base's scheduler config (scaled_linear 0.00085 .. 0.012, 1000 steps), built locally.
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


def test_alphas_cumprod_match_diffusers():
    torch.testing.assert_close(csd.scaled_linear_alphas_cumprod(), sd21_scheduler().alphas_cumprod)


def test_add_noise_matches_diffusers():
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([20, 250, 499])
    sched = sd21_scheduler()
    torch.testing.assert_close(csd.add_noise(z, eps, t, sched.alphas_cumprod), sched.add_noise(z, eps, t))


def np_csd(z, z_t, t, eps_neg, eps_pos, abar, cfg, w=None):
    """float64 numpy reference: returns (loss, grad)."""
    a = abar[t].reshape(-1, 1, 1, 1)
    eps_cfg = eps_neg + cfg * (eps_pos - eps_neg)
    real = (z_t - np.sqrt(1 - a) * eps_cfg) / np.sqrt(a)
    fake = (z_t - np.sqrt(1 - a) * eps_neg) / np.sqrt(a)
    wf = np.abs(z - real).mean(axis=(1, 2, 3), keepdims=True) + 1e-6
    grad = (fake - real) / wf
    w = np.ones_like(z[:, :1]) if w is None else w
    return (w * grad**2).mean(), grad


def rand_problem(seed: int, b: int = 2, h: int = 8, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    abar = csd.scaled_linear_alphas_cumprod()
    z = torch.randn(b, 4, h, w, generator=g)
    t = torch.randint(20, 500, (b,), generator=g)
    z_t = csd.add_noise(z, torch.randn(b, 4, h, w, generator=g), t, abar)
    eps_neg, eps_pos = torch.randn(b, 4, h, w, generator=g), torch.randn(b, 4, h, w, generator=g)
    return z, z_t, t, eps_neg, eps_pos, abar


@pytest.mark.parametrize("weighted", [False, True])
def test_csd_loss_value_and_gradient_match_reference(weighted):
    z, z_t, t, eps_neg, eps_pos, abar = rand_problem(1)
    w = None
    if weighted:
        g = torch.Generator().manual_seed(2)
        w = daw_weights(torch.rand(2, 1, 8, 6, generator=g), torch.rand(2, 1, 8, 6, generator=g), 0.6)
    z = z.clone().requires_grad_(True)
    loss = csd.csd_loss(z, z_t, t, eps_neg, eps_pos, abar, cfg_scale=7.5, weight_map=w)
    loss.backward()
    ref_loss, ref_grad = np_csd(
        z.detach().double().numpy(),
        z_t.double().numpy(),
        t.numpy(),
        eps_neg.double().numpy(),
        eps_pos.double().numpy(),
        abar.double().numpy(),
        7.5,
        None if w is None else w.double().numpy(),
    )
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    # d loss / d z = 2 * W * grad / numel
    wnp = np.ones((2, 1, 8, 6)) if w is None else w.double().numpy()
    expected = 2 * wnp * ref_grad / z.numel()
    torch.testing.assert_close(z.grad, torch.from_numpy(expected).float(), atol=1e-7, rtol=1e-4)


def test_csd_loss_weight_map_is_resized_and_none_means_ones():
    z, z_t, t, eps_neg, eps_pos, abar = rand_problem(3)
    plain = csd.csd_loss(z, z_t, t, eps_neg, eps_pos, abar)
    ones = csd.csd_loss(z, z_t, t, eps_neg, eps_pos, abar, weight_map=torch.ones(2, 1, 64, 48))
    torch.testing.assert_close(plain, ones)
    big = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(4)) + 0.5
    small = torch.nn.functional.interpolate(big, size=(8, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        csd.csd_loss(z, z_t, t, eps_neg, eps_pos, abar, weight_map=big),
        csd.csd_loss(z, z_t, t, eps_neg, eps_pos, abar, weight_map=small),
    )


def test_prompt_without_effect_gives_zero_loss():
    """If the tag prompt changes nothing (eps_pos == eps_neg), real == fake and there is nothing to distil."""
    z, z_t, t, eps_neg, _, abar = rand_problem(5)
    assert csd.csd_loss(z, z_t, t, eps_neg, eps_neg, abar, cfg_scale=7.5).item() == 0.0


class LinearTeacher:
    """Stand-in for the frozen UNet (test scaffolding): eps = A z_t + b(t) + mean(embeds) per sample.
    Records its calls; owns a parameter to prove that no graph reaches it."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(10)
        self.a = torch.nn.Parameter(0.3 * torch.randn(4, 4, generator=g))
        self.calls: list[dict] = []

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            {
                "z_t": z_t.clone(),
                "t": t.clone(),
                "embeds": embeds.clone(),
                "grad_enabled": torch.is_grad_enabled(),
            }
        )
        out = torch.einsum("oc,bchw->bohw", self.a, z_t)
        out = out + (t.float() / 1000).view(-1, 1, 1, 1) + embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return out


def test_module_calls_teacher_once_with_neg_then_pos():
    b, seq, dim = 3, 5, 6
    g = torch.Generator().manual_seed(11)
    latents = torch.randn(b, 4, 8, 8, generator=g).requires_grad_(True)
    pos, neg = torch.randn(b, seq, dim, generator=g), torch.randn(1, seq, dim, generator=g)  # neg broadcast
    abar = csd.scaled_linear_alphas_cumprod()
    teacher = LinearTeacher()
    mod = csd.ClassifierScoreDistillation(cfg_scale=7.5, t_min=20, t_max=500)
    out = mod.compute(latents, teacher, pos, neg, abar, generator=torch.Generator().manual_seed(12))

    assert len(teacher.calls) == 1
    call = teacher.calls[0]
    assert not call["grad_enabled"] and not call["z_t"].requires_grad
    assert call["z_t"].shape == (2 * b, 4, 8, 8) and call["t"].shape == (2 * b,)
    torch.testing.assert_close(call["embeds"], torch.cat([neg.expand(b, -1, -1), pos]))  # [neg; pos]
    torch.testing.assert_close(call["z_t"][:b], call["z_t"][b:])
    torch.testing.assert_close(call["t"][:b], call["t"][b:])
    torch.testing.assert_close(call["t"][:b], out.timesteps)
    assert ((out.timesteps >= 20) & (out.timesteps < 500)).all()

    # the loss is csd_loss on the teacher's outputs
    with torch.no_grad():
        eps_neg, eps_pos = teacher.__call__(call["z_t"], call["t"], call["embeds"]).chunk(2)
    ref = csd.csd_loss(latents, out.noisy_latents, out.timesteps, eps_neg, eps_pos, abar, 7.5)
    torch.testing.assert_close(out.loss, ref)

    out.loss.backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert teacher.a.grad is None  # no graph through the teacher


def test_forward_returns_scalar_and_is_reproducible():
    g = torch.Generator().manual_seed(13)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    pos, neg = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    abar = csd.scaled_linear_alphas_cumprod()
    mod = csd.ClassifierScoreDistillation()
    l1 = mod(latents, LinearTeacher(), pos, neg, abar, generator=torch.Generator().manual_seed(1))
    l2 = mod(latents, LinearTeacher(), pos, neg, abar, generator=torch.Generator().manual_seed(1))
    l3 = mod(latents, LinearTeacher(), pos, neg, abar, generator=torch.Generator().manual_seed(2))
    assert l1.shape == () and torch.equal(l1, l2) and not torch.equal(l1, l3)
    assert list(mod.parameters()) == [] and list(mod.buffers()) == []


def test_timestep_range_covers_interval():
    mod = csd.ClassifierScoreDistillation(t_min=20, t_max=500)
    t, eps = mod.sample(torch.zeros(20_000, 1, 1, 1), torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 20 and t.max() == 499
    assert eps.shape == (20_000, 1, 1, 1) and eps.dtype == torch.float32


def test_defaults_and_validation():
    mod = csd.ClassifierScoreDistillation()
    assert (mod.cfg_scale, mod.t_min, mod.t_max) == (7.5, 20, 500)
    assert mod.negative_prompt.startswith("painting, oil painting") and mod.negative_prompt.endswith(
        "over-smooth"
    )
    assert mod.negative_prompt.count("oil painting") == 2
    with pytest.raises(ValueError):
        csd.ClassifierScoreDistillation(t_min=500, t_max=20)
    with pytest.raises(ValueError):
        csd.ClassifierScoreDistillation(t_max=2000)(
            torch.zeros(1, 4, 2, 2),
            LinearTeacher(),
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2, 3),
            csd.scaled_linear_alphas_cumprod(),
        )
