"""FiDeSRModule: wiring of the components into the losses, checkpoints, exact resume, CPU training."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from fidesr.cli.train import train
from fidesr.components.daw import detail_map, error_map, resize_weights
from fidesr.components.distill.csd import add_noise, csd_loss


def _model(compose, overrides):
    return instantiate(
        compose(
            [
                "experiment=demo",
                "backbone.ae_warmup_steps=10",
                "backbone.prior_steps=0",
                "backbone.vae_channels=[32,64,64]",
                "backbone.unet_zero_out=false",
                "paths.output_dir=/tmp/x",
                *overrides,
            ]
        ).model
    )


def _batch(seed=0, b=2, size=32):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, size, size, generator=g)
    lq = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True),
        scale_factor=4,
        mode="bicubic",
    ).clamp(0, 1)
    return {"gt": gt, "lq": lq, "prompt": ["a photo"] * b, "name": [f"x{i}" for i in range(b)]}


def _randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "out_conv" in n or "conv5" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def _loss(model, batch, step=0):
    if not isinstance(model._trainer, types.SimpleNamespace):  # a test may attach a stand-in trainer
        model.trainer = None
    model._logged = {}
    model.log_dict = lambda d, **k: model._logged.update(d)  # the module logs through Lightning normally
    model.log = lambda *a, **k: None
    torch.manual_seed(0)
    type(model).global_step = property(lambda self: step)  # noqa: B023 - restored by the fixture below
    return model.training_step(batch, 0)


@pytest.fixture(autouse=True)
def _restore_global_step():
    from fidesr.model import FiDeSRModule

    original = FiDeSRModule.__dict__.get("global_step")
    yield
    if original is None and "global_step" in FiDeSRModule.__dict__:
        del FiDeSRModule.global_step


def test_daw_off_and_daw_before_warmup_equal_plain_losses_bit_for_bit(compose, tiny_backbone_folder):
    batch = _batch()
    plain = _model(compose, ["daw=off"])
    _randomize_lora(plain)
    with_daw = _model(compose, ["daw=on"])  # warm-up 2000 steps: alpha is 0 at step 5
    with_daw.load_state_dict(plain.state_dict(), strict=False)
    a, b = _loss(plain, batch, step=5), _loss(with_daw, batch, step=5)
    assert torch.equal(a, b)
    assert with_daw._logged["train/daw/alpha"] == 0.0
    # After the schedule starts, DAW changes the loss.
    c = _loss(with_daw, batch, step=3000)
    assert not torch.equal(a, c) and with_daw._logged["train/daw/alpha"] == pytest.approx(0.6)


def test_generator_wiring_matches_the_formula(compose, tiny_backbone_folder):
    """z_r = z_L - (r + LRRB(z_L, r)), decoded; z_L = E(LQ-up) sampled with the step generator."""
    model = _model(compose, [])
    _randomize_lora(model)
    lq = _batch()["lq"] * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sr, out = model(lq, ["", ""], generator=g1)
    bb = model.backbone
    z = bb.encode(lq, generator=g2)
    emb = bb.encode_prompt(["", ""])
    r = bb.unet(z, torch.ones(2, dtype=torch.long), encoder_hidden_states=emb).sample
    z_r = z - (r + model.lrrb(z, r))
    torch.testing.assert_close(out.z_sr, z_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sr, bb.decode(z_r), rtol=1e-4, atol=1e-4)
    assert (out.refined_residual - out.residual).abs().max() > 0


def test_losses_weighted_and_csd_uses_tags_negative_prompt_and_frozen_teacher(compose, tiny_backbone_folder):
    model = _model(
        compose, ["model.null_text_ratio=0.0", "model.lambda_lpips=2.0", "model.lambda_distill=1.0"]
    )
    _randomize_lora(model)
    calls = []
    teacher = model.backbone.teacher_eps

    def spy(z_t, t, embeds):
        calls.append((z_t.shape, embeds.clone()))
        return teacher(z_t, t, embeds)

    model.backbone.teacher_eps = spy
    batch = _batch()
    loss = _loss(model, batch, step=10**6)
    logged = model._logged
    # Recompute every term independently from the same random streams.
    step = 10**6
    type(model).global_step = property(lambda self: step)
    g_dev = model.step_generator(torch.device("cpu"), stream=1)
    gt, lq = batch["gt"] * 2 - 1, batch["lq"] * 2 - 1
    sr, out = model(lq, batch["prompt"], generator=g_dev)
    lp = model.perceptual(sr, gt)
    w = model.daw.weights(detail_map(gt), error_map(sr.detach(), gt, lp.detach()), step)
    assert w is not None and torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    mse = (resize_weights(w, gt.shape[-2:]) * (sr - gt) ** 2).mean()
    lpips = (resize_weights(w, lp.shape[-2:]) * lp).mean()
    t, eps = model.distill.sample(out.z_sr, g_dev)
    z_t = add_noise(out.z_sr.detach(), eps, t, model.backbone.alphas_cumprod)
    pos = model.backbone.encode_prompt(batch["prompt"])
    neg = model.backbone.encode_prompt([model.distill.negative_prompt] * 2)
    eps_neg, eps_pos = teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([neg, pos])).chunk(2)
    csd = csd_loss(
        out.z_sr,
        z_t,
        t,
        eps_neg,
        eps_pos,
        model.backbone.alphas_cumprod,
        7.5,
        resize_weights(w, out.z_sr.shape[-2:]),
    )
    torch.testing.assert_close(logged["train/loss/mse"], mse.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["train/loss/standin_random_vgg"], lpips.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["train/loss/csd"], csd.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss.detach(), (mse + 2 * lpips + csd).detach(), rtol=1e-4, atol=1e-7)
    # One teacher call per step on [negative; tags] embeddings.
    assert len(calls) == 1 and calls[0][0][0] == 4
    torch.testing.assert_close(calls[0][1], torch.cat([neg, pos]))
    assert {"train/daw/w_mean", "train/daw/w_max", "train/daw/alpha"} <= set(logged)


def _final_trainable(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.slow
def test_training_checkpoint_holds_only_trainable_weights_and_resume_is_exact(
    compose, fast_train_overrides, tmp_path
):
    common = [
        *fast_train_overrides,
        "trainer.val_check_interval=2",
        "validate_before_fit=false",
        "callbacks.validation_images=null",
        "logger=csv",
    ]
    full = tmp_path / "full"
    train(compose([*common, "trainer.max_steps=4", f"paths.output_dir={full}"]))
    part = tmp_path / "part"
    train(compose([*common, "trainer.max_steps=2", f"paths.output_dir={part}"]))
    first_half = _final_trainable(part)
    train(compose([*common, "trainer.max_steps=4", f"paths.output_dir={part}", "ckpt_path=last"]))

    a, b = _final_trainable(full), _final_trainable(part)
    assert a.keys() == b.keys() and all("lora_" in k or k.startswith("lrrb.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(first_half[k], a[k]) for k in a), "training did not change the weights"
    ckpt = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["optimizer_states"] and ckpt["fidesr"]["config"]["backbone"]["_target_"].endswith(
        "build_tiny_backbone"
    )
    assert (full / "checkpoints" / "last.ckpt").stat().st_size < 100 * 2**20


@pytest.mark.slow
def test_daw_p_reaches_training(compose, fast_train_overrides, tmp_path):
    """daw.p (the perceptual share of DAW's error map) changes what trains once DAW is on; it was ignored
    by the training step (and the logged weight maps) before DAW's weights were computed in one place."""
    common = [
        *fast_train_overrides,
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "validate_before_fit=false",
        "callbacks.validation_images=null",
        "logger=csv",
        "daw.warmup_steps=1",
    ]
    out = {}
    for p in (0.0, 1.0):
        train(compose([*common, f"daw.p={p}", f"paths.output_dir={tmp_path / str(p)}"]))
        out[p] = _final_trainable(tmp_path / str(p))
    assert any(not torch.equal(out[0.0][k], out[1.0][k]) for k in out[0.0])


@pytest.mark.parametrize("loss_scale", [None, 2.0**16])
def test_loss_chunk_gives_the_full_batch_loss_and_gradient(compose, tiny_backbone_folder, loss_scale):
    """Decoding and scoring 1 or 2 images at a time (backward per chunk down to the latent) reproduces the
    whole-batch loss and the gradient of every trained tensor, with DAW active and CSD on; with an fp16
    GradScaler attached the chunks' scaled gradients are unscaled exactly."""
    batch = _batch(b=3)
    model = _model(compose, ["model.null_text_ratio=0.0"])
    _randomize_lora(model)
    results = {}
    for chunk in (None, 1, 2):
        model.loss_chunk = chunk
        model.zero_grad(set_to_none=True)
        if loss_scale is not None:  # what Lightning's 16-mixed precision plugin holds
            scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale)
            plugin = types.SimpleNamespace(scaler=scaler)
            model._trainer = types.SimpleNamespace(precision_plugin=plugin, global_rank=0)
            assert model._loss_scale() == loss_scale
        loss = _loss(model, batch, step=10**6)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[chunk] = (loss.detach(), dict(model._logged), grads)
    ref_loss, ref_logs, ref_grads = results[None]
    assert len(ref_grads) > 10 and all(g.abs().sum() > 0 for g in ref_grads.values())
    for chunk in (1, 2):
        loss, logs, grads = results[chunk]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
        for key in ("train/loss/mse", "train/loss/standin_random_vgg", "train/loss/csd", "train/daw/w_mean"):
            torch.testing.assert_close(logs[key], ref_logs[key], rtol=1e-5, atol=1e-7)
        for name, g in ref_grads.items():
            # float32 sums in another order: differences ~1e-6 of the tensor's largest entry
            scale = float(g.abs().max())
            torch.testing.assert_close(
                grads[name], g, rtol=1e-4, atol=1e-5 * scale, msg=f"{name} (chunk {chunk})"
            )


def test_loss_chunk_must_be_positive(compose, tiny_backbone_folder):
    with pytest.raises(Exception, match="loss_chunk must be a positive"):
        _model(compose, ["model.loss_chunk=0"])


def test_loss_chunk_trains_like_the_whole_batch_through_lightning(compose, fast_train_overrides, tmp_path):
    """Two optimizer steps through the Trainer (its precision plugin, gradient clipping) with the batch
    scored whole or one image at a time end at the same weights. SGD: Adam's normalisation would blow the
    float rounding of near-zero gradients (e.g. cross-attention LoRA under the empty prompt) up to full steps."""
    common = [
        *fast_train_overrides,
        "validate_before_fit=false",
        "callbacks.validation_images=null",
        "logger=csv",
        "trainer.max_steps=2",
        "model.optimizer._target_=torch.optim.SGD",
        "model.optimizer.lr=0.1",
        "model.lambda_distill=1.0",  # the weight these plumbing tests were written with (the demo's: 0.002)
        "~model.optimizer.betas",
        "~model.optimizer.eps",
    ]
    finals = []
    for chunk in ("null", "1"):
        out = tmp_path / f"chunk_{chunk}"
        train(compose([*common, f"model.loss_chunk={chunk}", f"paths.output_dir={out}"]))
        finals.append(_final_trainable(out))
    whole, chunked = finals
    assert whole.keys() == chunked.keys()
    assert (
        max(float(v.abs().max()) for k, v in whole.items() if "lora_B" in k) > 1e-3
    )  # B starts at 0: it moved
    for k in whole:
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-4, atol=1e-6, msg=k)


def test_compile_parts_train_like_eager_and_reject_unknown_parts(compose, tiny_backbone_folder):
    """Compiled decoder, LPIPS and LRRB (aot_eager: Dynamo graphs + AOTAutograd backward, no codegen, so the
    test stays fast on the CPU) give the eager loss and gradients; the state dict keys do not change."""
    batch = _batch(b=2)
    eager = _model(compose, ["model.null_text_ratio=0.0"])
    _randomize_lora(eager)
    compiled = _model(
        compose,
        [
            "model.null_text_ratio=0.0",
            "model.compile_parts=[vae_decoder,lpips,lrrb]",
            "+model.compile_options.backend=aot_eager",
        ],
    )
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    grads = []
    for model in (eager, compiled):
        loss = _loss(model, batch, step=10**6)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(
            grads[1][1][name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=name
        )
    assert compiled.backbone.vae.decoder._compiled_call_impl is not None
    with pytest.raises(Exception, match="unknown part 'vae'"):
        _model(compose, ["model.compile_parts=[vae]"])
    with pytest.raises(Exception, match="'lrrb', which is switched off"):
        _model(compose, ["model.compile_parts=[lrrb]", "lrrb=off"])
