"""VSD: the generator's gradient against a hand-computed case, and the fake-score adapter on the tiny
backbone (one UNet, only its own LoRA trained, OSEDiff's mid-block default)."""

from __future__ import annotations

import pytest
import torch

from fidesr.backbone.lora import FAKE_SCORE_ADAPTER
from fidesr.components.distill import vsd as V
from fidesr.components.distill.csd import add_noise


def test_vsd_gradient_and_loss_match_a_hand_computed_case():
    # abar_t = 0.64: sqrt(abar) = 0.8, sqrt(1 - abar) = 0.6. One sample, one channel, two latent pixels.
    acp = torch.full((10,), 0.64)
    t = torch.tensor([3])
    z = torch.tensor([[[[1.0, 3.0]]]], requires_grad=True)
    z_t = torch.tensor([[[[2.0, 1.0]]]])
    eps_neg, eps_pos = torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0]]]])
    eps_fake = torch.tensor([[[[1.0, 0.0]]]])
    # cfg 2: eps_real = eps_neg + 2 (eps_pos - eps_neg) = [2, 1]
    # real = (z_t - 0.6 eps_real) / 0.8 = [0.8, 0.4] / 0.8 = [1, 0.5]
    # fake = (z_t - 0.6 eps_fake) / 0.8 = [1.4, 1.0] / 0.8 = [1.75, 1.25]
    # w = mean |z - real| = (0 + 2.5) / 2 = 1.25; grad = (fake - real) / w = [0.75, 0.75] / 1.25 = [0.6, 0.6]
    grad = V.vsd_gradient(z, z_t, t, eps_fake, eps_neg, eps_pos, acp, cfg_scale=2.0)
    torch.testing.assert_close(grad, torch.tensor([[[[0.6, 0.6]]]]))
    loss = V.vsd_loss(z, z_t, t, eps_fake, eps_neg, eps_pos, acp, cfg_scale=2.0)
    torch.testing.assert_close(loss, torch.tensor(0.36))  # mean(grad^2): F.mse_loss, no 0.5
    loss.backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[[0.6, 0.6]]]]))  # 2 grad / numel = 2 * 0.6 / 2


def test_vsd_weight_has_no_epsilon_unlike_csd():
    # OSEDiff divides by mean |z - real| exactly; CSD adds 1e-6. With |z - real| = 1e-6 the two differ 2x.
    acp = torch.full((10,), 0.64)
    t = torch.tensor([0])
    zeros = torch.zeros(1, 1, 1, 1)
    z = torch.full((1, 1, 1, 1), 1e-6)
    grad = V.vsd_gradient(z, zeros, t, -torch.ones_like(z), zeros, zeros, acp)
    torch.testing.assert_close(grad, torch.full_like(z, 0.75 / 1e-6), rtol=1e-5, atol=0)


@pytest.fixture
def vsd_backbone(make_tiny_backbone):
    backbone = make_tiny_backbone(lora_rank=4, lora_alpha=8)
    return backbone


def _unet_base_numel(unet) -> int:
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("modules", ["mid", "all"])
def test_fake_score_is_an_adapter_on_the_one_unet(vsd_backbone, modules):
    from diffusers import UNet2DConditionModel

    backbone = vsd_backbone
    base = _unet_base_numel(backbone.unet)
    gen_lora = {k: v.clone() for k, v in backbone.lora_state_dict().items()}
    backbone.add_fake_score_adapter(4, 8.0, modules)
    # No second UNet: one UNet2DConditionModel, its base weights unchanged in number, the new tensors all LoRA
    # of the fake-score adapter, on the mid-block ("others") modules only by default.
    assert sum(isinstance(m, UNet2DConditionModel) for m in backbone.modules()) == 1
    assert _unet_base_numel(backbone.unet) == base
    fake = backbone.fake_score_state_dict()
    assert fake and all(f".{FAKE_SCORE_ADAPTER}." in k for k in fake)
    others = set(backbone.lora_split["default_others"])
    mods = set(backbone.fake_score_modules)
    assert (mods == others) if modules == "mid" else (mods > others)
    assert backbone.lora_state_dict().keys() == gen_lora.keys()  # the generator's LoRA, without the fake
    # The generator's trainable parameters are its own LoRA only, the fake score's are its adapter's only.
    gen_ids = {id(p) for p in backbone.trainable_parameters()}
    fake_ids = {id(p) for p in backbone.fake_score_parameters()}
    assert gen_ids and fake_ids and not gen_ids & fake_ids
    assert all(p.requires_grad for p in backbone.trainable_parameters())
    assert not any(p.requires_grad for p in backbone.fake_score_parameters())  # inactive until used


def test_fake_eps_is_the_base_unet_plus_only_the_fake_adapter(vsd_backbone):
    backbone = vsd_backbone
    backbone.add_fake_score_adapter(4, 8.0, "mid")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, backbone.latent_channels, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    e = backbone.encode_prompt(["a", "b"])
    with torch.no_grad():
        for n, p in backbone.unet.named_parameters():  # non-zero adapters, so the views differ
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        teacher = backbone.teacher_eps(z, t, e)
        fake = backbone.fake_eps(z, t, e)
        gen = backbone.unet(z, t, encoder_hidden_states=e).sample  # generator adapters restored
        backbone.unet.set_adapters([FAKE_SCORE_ADAPTER])
        fake_ref = backbone.unet(z, t, encoder_hidden_states=e).sample
        backbone.unet.set_adapters(list(backbone.lora_split))
    torch.testing.assert_close(fake, fake_ref, rtol=0, atol=0)
    assert not torch.allclose(fake, teacher) and not torch.allclose(fake, gen)


def test_module_compute_and_fake_score_step_train_only_their_adapters(vsd_backbone):
    backbone = vsd_backbone
    backbone.add_fake_score_adapter(4, 8.0, "mid")
    vsd = V.VariationalScoreDistillation(t_min=20, t_max=980)
    acp = backbone.alphas_cumprod
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, backbone.latent_channels, 8, 8, generator=g, requires_grad=True)
    pos, neg = backbone.encode_prompt(["tag", "tag"]), backbone.encode_prompt(["neg", "neg"])
    out = vsd.compute(
        z, backbone.teacher_eps, backbone.fake_eps, pos, neg, acp, generator=torch.Generator().manual_seed(5)
    )
    # The same draws, by hand: t ~ U[20, 980), eps, z_t; the real score with CFG, the fake one on the tags.
    g2 = torch.Generator().manual_seed(5)
    t = torch.randint(20, 980, (2,), generator=g2)
    eps = torch.randn(z.shape, generator=g2)
    z_t = add_noise(z.detach(), eps, t, acp)
    with torch.no_grad():
        e_neg, e_pos = backbone.teacher_eps(
            torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([neg, pos])
        ).chunk(2)
        e_fake = backbone.fake_eps(z_t, t, pos)
    torch.testing.assert_close(out.timesteps, t)
    torch.testing.assert_close(out.loss, V.vsd_loss(z, z_t, t, e_fake, e_neg, e_pos, acp, 7.5))
    out.loss.backward()
    assert all(p.grad is None for p in backbone.fake_score_parameters())  # the scores are constants

    # The fake score's diffusion loss reaches only its adapter.
    before_gen = {k: v.clone() for k, v in backbone.lora_state_dict().items()}
    loss_fake = vsd.fake_score_loss(
        z, backbone.fake_eps, pos, acp, generator=torch.Generator().manual_seed(2)
    )
    assert loss_fake.requires_grad and z.grad is not None
    z.grad = None
    from fidesr.backbone.lora import FAKE_SCORE_ADAPTER as FAKE

    with backbone.adapters_active([FAKE]):
        loss_fake = vsd.fake_score_loss(
            z, backbone.fake_eps, pos, acp, generator=torch.Generator().manual_seed(2)
        )
        loss_fake.backward()
    assert z.grad is None
    assert all(p.grad is not None for p in backbone.fake_score_parameters())
    assert all(p.grad is None for p in backbone.trainable_parameters())
    for k, v in backbone.lora_state_dict().items():
        assert torch.equal(v, before_gen[k])
