"""The compared systems as configs (docs/baselines.md): OSEDiff with VSD, PiSA-SR with two LoRA sets, its
inference-time strengths, and their checkpoints / exports. Tiny backbone, real training runs of seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fidesr.backbone.lora import FAKE_SCORE_ADAPTER
from fidesr.cli.train import train

COMMON = [
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "validate_before_fit=false",
    "callbacks.validation_images=null",
    "logger=csv",
]


def _fast(overrides: list[str], experiment: str) -> list[str]:
    """The suite's fast-run overrides with ``experiment`` in place of the demo (and no DAW settings: the
    baselines switch DAW off)."""
    keep = [o for o in overrides if not o.startswith(("experiment=", "daw."))]
    return [f"experiment={experiment}", *keep, *COMMON]


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _logged(run: Path) -> set[str]:
    with open(
        run / "csv" / "metrics.csv"
    ) as fh:  # the CSV logger's file (metrics.csv at the top: validation)
        rows = list(csv.DictReader(fh))
    return {k for row in rows for k, v in row.items() if v not in ("", None)}


# ---------------------------------------------------------------------------------------------- OSEDiff
@pytest.mark.slow
def test_osediff_like_trains_with_vsd_and_resumes_exactly(compose, fast_train_overrides, tmp_path):
    over = _fast(fast_train_overrides, "[demo,osediff_like]")
    full = tmp_path / "full"
    train(compose([*over, "trainer.max_steps=4", f"paths.output_dir={full}"]))
    assert {"train/loss/vsd", "train/loss/vsd_fake_score"} <= _logged(full)
    assert "train/loss/csd" not in _logged(full)
    ckpt = _ckpt(full)
    fake = [k for k in ckpt["state_dict"] if f".{FAKE_SCORE_ADAPTER}." in k]
    assert fake and ckpt["fidesr_fake_score"]["optimizer"]["state"]  # the fake score's AdamW moments
    # Exact resume: 2 steps + 2 resumed steps == 4 steps, generator and fake score alike.
    part = tmp_path / "part"
    train(compose([*over, "trainer.max_steps=2", f"paths.output_dir={part}"]))
    first = _ckpt(part)["state_dict"]
    train(compose([*over, "trainer.max_steps=4", f"paths.output_dir={part}", "ckpt_path=last"]))
    a, b = ckpt["state_dict"], _ckpt(part)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(first[k], a[k]) for k in fake), "the fake score did not train"
    # OSEDiff's VAE-encoder LoRA trains with the generator: encoder convs, mid-attention, quant_conv only.
    vae = [k for k in a if k.startswith("backbone.vae.")]
    assert vae and all(".encoder." in k or k.startswith("backbone.vae.quant_conv.") for k in vae)
    assert any(k.startswith("backbone.vae.quant_conv.") for k in vae)
    assert any("mid_block.attentions.0.to_q" in k for k in vae)
    assert any(not torch.equal(first[k], a[k]) for k in vae), "the VAE-encoder LoRA did not train"
    # The model read back for inference: the fake score left out, the VAE LoRA in, also through an export.
    from fidesr.modelio import TrainedWeights

    weights = TrainedWeights.load(full / "checkpoints" / "last.ckpt")
    assert weights.state and not any(FAKE_SCORE_ADAPTER in k for k in weights.state)
    assert any(k.startswith("vae.") for k in weights.state)
    backbone, _, _ = weights.build()
    for k, v in backbone.vae_lora_state_dict().items():
        torch.testing.assert_close(v, a[f"backbone.vae.{k}"], rtol=0, atol=0)
    folder = weights.save_pretrained(tmp_path / "export")  # the VAE LoRA in extras.safetensors
    again = TrainedWeights.load(folder)
    assert again.state.keys() == weights.state.keys() and (folder / "extras.safetensors").is_file()
    assert all(torch.equal(again.state[k], weights.state[k]) for k in weights.state)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=[demo,pisasr_like]", "stages=none"], "needs a stage schedule"),
        (["experiment=[demo,osediff_like]", "stages=pisasr"], r"names LoRA sets \['pix'\]"),
        (["experiment=[demo,pisasr_like]", "daw=short"], "has no perceptual loss"),
    ],
)
def test_a_schedule_that_does_not_fit_the_model_is_refused(compose, tiny_backbone_folder, overrides, message):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose(
        [
            *overrides,
            "backbone.ae_warmup_steps=10",
            "backbone.prior_steps=0",
            "backbone.vae_channels=[32,64,64]",
            "paths.output_dir=/tmp/x",
        ]
    )
    with pytest.raises(InstantiationException, match=message):
        instantiate(cfg.model)


# ---------------------------------------------------------------------------------------------- PiSA-SR
@pytest.fixture(scope="module")
def pisa_run(tmp_path_factory, session_train_setup) -> Path:
    """A 4-step PiSA-SR-like run: the pixel stage for steps 0-1, the semantic stage for steps 2-3, with a
    checkpoint after each stage."""
    _compose, FAST_TRAIN_OVERRIDES, _ = session_train_setup

    run = tmp_path_factory.mktemp("pisa")
    over = [*_fast(FAST_TRAIN_OVERRIDES, "[demo,pisasr_like]"), "first_stage_steps=2"]
    train(_compose([*over, "trainer.max_steps=2", f"paths.output_dir={run}"]))
    (run / "stage1.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    train(_compose([*over, "trainer.max_steps=4", f"paths.output_dir={run}", "ckpt_path=last"]))
    return run


@pytest.mark.slow
def test_pisasr_like_checkpoint_has_both_sets_trained_in_their_stages(pisa_run, session_train_setup):
    init = _tiny_two_set_backbone_state(session_train_setup)
    s1 = torch.load(pisa_run / "stage1.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    s2 = _ckpt(pisa_run)["state_dict"]
    pix = [k for k in s2 if "lora_" in k and k.split(".lora_")[1].split(".")[1].endswith("_pix")]
    sem = [k for k in s2 if "lora_" in k and k.split(".lora_")[1].split(".")[1].endswith("_sem")]
    assert pix and sem and len(pix) == len(sem) and len(pix) + len(sem) == len(s2)
    assert any("default_encoder_pix" in k for k in pix) and any("default_others_sem" in k for k in sem)
    # Stage 1 (pixel): the pixel set moved, the semantic set is still its initialisation.
    assert any(not torch.equal(s1[k], init[k]) for k in pix)
    assert all(torch.equal(s1[k], init[k]) for k in sem)
    # Stage 2 (semantic): the pixel set frozen, the semantic set moved.
    assert all(torch.equal(s2[k], s1[k]) for k in pix)
    assert any(not torch.equal(s2[k], s1[k]) for k in sem)
    logged = _logged(pisa_run)
    assert "train/loss/csd" in logged and "train/loss/standin_random_vgg" in logged  # semantic stage only


def _tiny_two_set_backbone_state(session_train_setup) -> dict[str, torch.Tensor]:
    """The initial LoRA of the pisa_run (same seed, same construction)."""
    import lightning as L
    from hydra.utils import instantiate

    _compose, _, TINY_OVERRIDES = session_train_setup

    cfg = _compose(
        ["experiment=[demo,pisasr_like]", *TINY_OVERRIDES, "paths.output_dir=/tmp/x", "first_stage_steps=2"]
    )
    L.seed_everything(cfg.seed, workers=True)
    model = instantiate(cfg.model)
    return {f"backbone.unet.{k}": v for k, v in model.backbone.lora_state_dict().items()}


def _two_set_backbone(make_tiny_backbone, seed=0):
    backbone = make_tiny_backbone(lora_rank=4, lora_alpha=8, lora_sets=["pix", "sem"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in backbone.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return backbone


def test_pisasr_strengths_combine_the_two_sets_as_pisasr_does(make_tiny_backbone):
    """z_H = z_L - (lambda_pix eps_pix + lambda_sem (eps_both - eps_pix)), by hand on the tiny backbone."""
    from fidesr.pipeline import FiDeSRPipeline

    backbone = _two_set_backbone(make_tiny_backbone)
    pipe = FiDeSRPipeline(
        backbone, None, None, min_lq_size=16, tile_size=None, vae_tiling=False, color_fix="none"
    )
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    z_lq = backbone.encode(pipe.upsample(lq)[0] * 2 - 1, generator=torch.Generator().manual_seed(0))
    e = backbone.encode_prompt([""])
    adapters = backbone.unet.peft_config.keys()
    with torch.no_grad():
        backbone.unet.set_adapters([a for a in adapters if a.endswith("_pix")])
        eps_pix = backbone.unet(z_lq, torch.tensor([1]), encoder_hidden_states=e).sample
        backbone.unet.set_adapters([a for a in adapters if a.endswith(("_pix", "_sem"))])
        eps_both = backbone.unet(z_lq, torch.tensor([1]), encoder_hidden_states=e).sample
    assert not torch.allclose(eps_pix, eps_both)
    for lp, ls in [(0.3, 0.7), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (1.5, 0.5)]:
        out = pipe(
            lq,
            strengths={"pix": lp, "sem": ls},
            generator=torch.Generator().manual_seed(0),
            return_latents=True,
        )
        expected = z_lq - (lp * eps_pix + ls * (eps_both - eps_pix))
        torch.testing.assert_close(out.latents.z_sr, expected, rtol=1e-5, atol=1e-6, msg=f"{lp}, {ls}")
    # Defaults (1, 1): the merged model, one UNet call with both sets: what validation runs.
    plain = pipe(lq, generator=torch.Generator().manual_seed(0), return_latents=True).latents.z_sr
    torch.testing.assert_close(plain, z_lq - eps_both, rtol=1e-5, atol=1e-6)
    # The adapters are as before the calls (both sets active).
    assert set(backbone.unet.active_adapters()) == set(backbone.lora_split)


def test_strengths_need_a_two_set_model(make_tiny_backbone):
    from fidesr.pipeline import FiDeSRPipeline

    pipe = FiDeSRPipeline(make_tiny_backbone(), None, None, min_lq_size=16)
    with pytest.raises(ValueError, match="several LoRA sets"):
        pipe(torch.rand(1, 3, 16, 16), strengths={"sem": 0.5})


def test_two_set_export_writes_one_lora_file_per_set_and_reloads(
    make_tiny_backbone, tiny_backbone_folder, tmp_path
):
    from fidesr.modelio import LORA_FILE, TrainedWeights, trained_state
    from fidesr.pipeline import FiDeSRPipeline

    backbone = _two_set_backbone(make_tiny_backbone)
    config = {
        "backbone": {
            "_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
            "pretrained": str(tiny_backbone_folder),
            "local_files_only": True,
            "lora_rank": 4,
            "lora_alpha": 8,
            "lora_sets": ["pix", "sem"],
        },
        "lrrb": None,
        "lfim": None,
        "model": {"color_fix": "none", "min_lq_size": 16},
    }
    folder = TrainedWeights(config, trained_state(backbone), "tiny").save_pretrained(tmp_path / "export")
    assert (folder / "pix" / LORA_FILE).is_file() and (folder / "sem" / LORA_FILE).is_file()
    assert not (folder / LORA_FILE).exists()
    import json

    meta = json.loads((folder / "config.json").read_text())
    assert meta["version"] == 3 and meta["lora"]["weights"] == {
        "pix": f"pix/{LORA_FILE}",
        "sem": f"sem/{LORA_FILE}",
    }
    assert sorted(meta["lora"]["adapters"]) == sorted(backbone.lora_split)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    live = FiDeSRPipeline(backbone, None, None, min_lq_size=16, color_fix="none")
    loaded = FiDeSRPipeline.from_pretrained(folder, device="cpu")
    assert loaded.backbone.lora_sets == ("pix", "sem")  # not fused: the strengths stay free
    for lp, ls in [(1.0, 0.0), (0.5, 1.0)]:
        a = live(lq, strengths={"pix": lp, "sem": ls}, generator=torch.Generator().manual_seed(0)).sr
        b = loaded(lq, strengths={"pix": lp, "sem": ls}, generator=torch.Generator().manual_seed(0)).sr
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_upscale_strengths_give_different_images_on_a_trained_checkpoint(pisa_run, tmp_path):
    from fidesr.cli.upscale import main

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / "a.png")
    outs = {}
    for lp, ls in [("1", "0"), ("0", "0"), ("1", "1")]:
        out = tmp_path / f"out_{lp}_{ls}"
        assert (
            main(
                [
                    str(src),
                    "-o",
                    str(out),
                    "--checkpoint",
                    str(pisa_run / "checkpoints" / "last.ckpt"),
                    "--device",
                    "cpu",
                    "--no-progress",
                    "--scale",
                    "2",
                    "--lambda-pix",
                    lp,
                    "--lambda-sem",
                    ls,
                ]
            )
            == 0
        )
        outs[(lp, ls)] = np.asarray(Image.open(out / "a.png"), dtype=np.int16)
    assert np.abs(outs[("1", "0")] - outs[("0", "0")]).max() > 0
    assert np.abs(outs[("1", "1")] - outs[("1", "0")]).max() > 0


@pytest.mark.slow
def test_eval_checkpoint_mode_applies_lora_strengths(pisa_run, tmp_path):
    """fidesr-eval checkpoint=... lora_strengths.lambda_sem=...: the strengths reach the pipeline."""
    from hydra import compose, initialize_config_module

    from fidesr.cli.eval import run
    from fidesr.data.imageio import load_image, save_image

    g = torch.Generator().manual_seed(0)
    lq = torch.rand(3, 16, 16, generator=g)
    save_image(lq, tmp_path / "lq" / "im0.png")
    save_image(
        torch.nn.functional.interpolate(lq[None], scale_factor=4, mode="bicubic")[0].clamp(0, 1),
        tmp_path / "gt" / "im0.png",
    )
    outs = {}
    for sem in (0.0, 1.0):
        with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
            cfg = compose(
                config_name="eval",
                overrides=[
                    f"checkpoint={pisa_run / 'checkpoints' / 'last.ckpt'}",
                    f"lq_dir={tmp_path / 'lq'}",
                    f"gt_dir={tmp_path / 'gt'}",
                    "metrics=[psnr]",
                    f"output_dir={tmp_path / f'out{sem}'}",
                    "device=cpu",
                    "lora_strengths.lambda_pix=1",
                    f"lora_strengths.lambda_sem={sem}",
                ],
            )
        run(cfg)
        outs[sem] = load_image(next((tmp_path / f"out{sem}").rglob("im0.png")))
    assert (outs[0.0] - outs[1.0]).abs().max() > 0


@pytest.mark.slow
def test_app_request_applies_the_two_set_strengths(pisa_run, tmp_path):
    """fidesr-app's request function: PiSA-SR's strengths reach the pipeline (the page shows their sliders
    for two-set models only)."""
    from fidesr.app import upscale_request
    from fidesr.pipeline import FiDeSRPipeline

    pipe = FiDeSRPipeline.from_pretrained(pisa_run / "checkpoints" / "last.ckpt", device="cpu")
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    a = upscale_request(pipe, img, None, None, "adain", tmp_path, lambda_pix=1.0, lambda_sem=0.0)
    b = upscale_request(pipe, img, None, None, "adain", tmp_path, lambda_pix=1.0, lambda_sem=1.0)
    assert a.png != b.png and np.abs(a.sr.astype(int) - b.sr.astype(int)).max() > 0
