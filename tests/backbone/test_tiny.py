"""The shipped tiny backbone: its file matches its spec and its recorded figures, the default config selects
it (nothing is built), concurrent first uses of a spec build once, and its prior carries a signal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fidesr.backbone import tiny
from fidesr.backbone.tiny_build import reconstruction_psnr
from fidesr.data.photos import prepare_demo_data

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_file_matches_its_spec_and_config() -> None:
    spec, info, tensors = tiny.read_shipped()
    assert spec == tiny._normalised(tiny.DEFAULT_SPEC)
    # conf/backbone/tiny.yaml (what experiment=demo uses) names exactly this spec
    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/backbone/tiny.yaml"))
    assert {k: yaml[k] for k in spec} == spec
    assert {k.split(".")[0] for k in tensors} == {"unet", "vae", "text_encoder"}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert tiny.SHIPPED_FILE.stat().st_size < 16 * 2**20  # a few MB in the package
    assert info["vae_val_psnr_db"] > info["bicubic_val_psnr_db"] + 3.0
    assert info["prior_loss"] < 0.5  # eps prediction: 1.0 is a network that predicts nothing


def test_shipped_weights_load_strictly_and_reproduce_the_recorded_reconstruction(cache_dir: Path) -> None:
    folder = tiny.tiny_sd_folder(cache_dir, **tiny.DEFAULT_SPEC)
    assert folder.name.startswith(f"tiny-sd-v{tiny.TINY_VERSION}-")
    assert json.loads((folder / "tiny_info.json").read_text())["shipped"] == tiny.SHIPPED_FILE.name
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    _, info, _ = tiny.read_shipped()
    measured = reconstruction_psnr(vae, prepare_demo_data(cache_dir / "demo_data") / "val")
    assert measured["vae_val_psnr_db"] == pytest.approx(info["vae_val_psnr_db"], abs=0.05)
    assert measured["bicubic_val_psnr_db"] == pytest.approx(info["bicubic_val_psnr_db"], abs=1e-3)


def test_other_specs_are_keyed_apart_and_a_spec_without_prior_keeps_its_old_key() -> None:
    old = dict(unet_channels=[32, 64], vae_channels=[32, 64, 64], text_dim=32, ae_warmup_steps=1000,
               ae_crop=32, ae_batch=16, seed=0, unet_zero_out=True)  # fmt: skip
    assert tiny.spec_key(old) == tiny.spec_key({**old, "prior_steps": 0, "prior_crop": 64, "prior_batch": 16})
    assert tiny.spec_key(old) != tiny.spec_key(
        {**old, "prior_steps": 10, "prior_crop": 64, "prior_batch": 16}
    )


@pytest.mark.slow
def test_concurrent_first_uses_build_once(tmp_path: Path) -> None:
    spec = dict(unet_channels=[8, 16], vae_channels=[8, 16], text_dim=8, ae_warmup_steps=2, ae_crop=16,
                ae_batch=2, seed=0, unet_zero_out=False, prior_steps=2, prior_crop=16, prior_batch=2)  # fmt: skip
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s');"
        "from fidesr.backbone.tiny import tiny_sd_folder;"
        f"print(tiny_sd_folder(sys.argv[1], **{spec!r}))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o.strip() for o, _ in outs}) == 1
    assert sum("Building the tiny SD backbone" in err for _, err in outs) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tiny-sd-") and p.is_dir()] == [
        Path(outs[0][0].strip()).name
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "term"), [("demo", "csd"), ("[demo,osediff_like]", "vsd")])
def test_the_prior_gives_a_distillation_loss_with_gradient_to_lora(compose, cache_dir, experiment, term):
    """Issue 21: with the shipped prior, CSD (and osediff_like's VSD) is non-zero and reaches the LoRA
    weights (the first tiny backbone's zero conv_out made both exactly 0)."""
    torch.manual_seed(0)
    model = instantiate(compose([f"experiment={experiment}", "paths.output_dir=/tmp/x"]).model)
    assert model.distill.name == term
    lq = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model.sr_latent(lq, ["", ""], generator=torch.Generator().manual_seed(0))
    loss = model.distill.training_loss(
        out.z_sr,
        model.backbone,
        ["", ""],
        weight_map=None,
        generator=torch.Generator().manual_seed(1),
        fp16=False,
    ).loss
    assert float(loss.detach()) > 1e-6
    loss.backward()
    lora = [p for n, p in model.backbone.unet.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and sum(float(p.grad.abs().sum()) for p in lora if p.grad is not None) > 0
