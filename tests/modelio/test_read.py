"""Models in and out: the exported folder in plain diffusers, the Hub cache, the CLI round trip, fuse.

The model is the session's tiny backbone with random ("trained-looking") LoRA and LRRB weights
(``trained_model`` in conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fidesr.errors import ConfigValueError, ModelFileError
from fidesr.modelio import LORA_FILE, TrainedWeights
from fidesr.pipeline import FiDeSRPipeline

# Runs in a fresh interpreter that never imports fidesr: what a diffusers user does with the folder.
DIFFUSERS_ONLY = textwrap.dedent("""
    import json, sys, torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    base, sources, inputs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    def pipeline():
        return StableDiffusionPipeline(
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
            scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    x = torch.load(inputs)
    results = {}
    for name, src in sources.items():
        pipe = pipeline()
        try:
            pipe.load_lora_weights(src)
        except Exception as err:
            results[name] = {"raised": f"{type(err).__name__}: {err}"}
            continue
        with torch.no_grad():
            eps = pipe.unet(x["z"], x["t"], encoder_hidden_states=x["emb"]).sample
        torch.save(eps, f"{out}.{name}.pt")
        results[name] = {"lora_tensors": sum("lora" in k for k in pipe.unet.state_dict())}
    assert not any(m == "fidesr" or m.startswith("fidesr.") for m in sys.modules)
    print("RESULT", json.dumps(results))
""")


@pytest.fixture(scope="module")
def exported(trained_model: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fidesr.cli.export import main

    folder = tmp_path_factory.mktemp("export") / "fidesr-tiny"
    assert main([str(trained_model["ckpt"]), "-o", str(folder)]) == 0
    return folder


def test_the_exported_folder_loads_in_plain_diffusers(
    trained_model: dict, exported: Path, tmp_path: Path
) -> None:
    """diffusers' load_lora_weights(DIR) gives fidesr's UNet output (1e-5); every other fidesr file handed
    to it fails loudly instead of loading as a no-op."""
    weights = TrainedWeights.load(exported)
    backbone, _, _ = weights.build()
    g = torch.Generator().manual_seed(0)
    x = {
        "z": torch.randn(2, 4, 16, 16, generator=g),
        "t": torch.tensor([1, 1]),
        "emb": backbone.encode_prompt(["", "a photo"]),
    }
    torch.save(x, tmp_path / "inputs.pt")
    sources = {
        "folder": str(exported),
        "checkpoint": str(trained_model["ckpt"]),
        "lrrb": str(exported / "lrrb.safetensors"),
    }
    script = tmp_path / "diffusers_only.py"
    script.write_text(DIFFUSERS_ONLY)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(trained_model["folder"]),
            json.dumps(sources),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "eps"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert results["folder"]["lora_tensors"] == len(backbone.lora_state_dict())
    with torch.no_grad():
        ours = backbone.unet(x["z"], x["t"], encoder_hidden_states=x["emb"]).sample
        base = backbone.teacher_eps(x["z"], x["t"], x["emb"])
    theirs = torch.load(tmp_path / "eps.folder.pt")
    assert (theirs - ours).abs().max() < 1e-5
    assert (theirs - base).abs().max() > 1e-3  # the LoRA is really there, not its initial zero update
    for name in ("checkpoint", "lrrb"):
        assert "raised" in results[name], f"diffusers loaded fidesr's {name} file without complaint"


def test_fidesr_loads_its_export_back_exactly(trained_model: dict, exported: Path) -> None:
    a, b = TrainedWeights.load(trained_model["ckpt"]), TrainedWeights.load(exported)
    assert a.state.keys() == b.state.keys() and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    meta = json.loads((exported / "config.json").read_text())
    assert meta["lora"]["rank"] == 8 and set(meta["lora"]["adapters"]) == {
        "default_encoder",
        "default_decoder",
        "default_others",
    }
    card = (exported / "README.md").read_text()
    assert "rank 8" in card and "Open RAIL" in card and "step 7" in card


def test_upscale_from_the_folder_and_the_checkpoint_are_byte_identical(
    trained_model: dict, exported: Path, tmp_path: Path
) -> None:
    from fidesr.cli.upscale import main
    from fidesr.data.imageio import save_image

    g = torch.Generator().manual_seed(3)
    for i in range(2):
        save_image(torch.rand(3, 24, 20, generator=g), tmp_path / "in" / f"im{i}.png")
    for name, model in (("ckpt", trained_model["ckpt"]), ("dir", exported)):
        assert (
            main(
                [
                    str(tmp_path / "in"),
                    "-o",
                    str(tmp_path / name),
                    "--checkpoint",
                    str(model),
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    for i in range(2):
        assert (tmp_path / "ckpt" / f"im{i}.png").read_bytes() == (
            tmp_path / "dir" / f"im{i}.png"
        ).read_bytes()


def _hub_cache(root: Path, repo_id: str, folder: Path, revision: str = "a" * 40) -> Path:
    """A Hugging Face cache holding ``folder`` as ``repo_id`` at ``revision`` (huggingface_hub's layout:
    blobs by content, snapshots linking to them, refs/main naming the snapshot)."""
    import hashlib

    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo


def test_a_hub_repo_id_resolves_from_the_hf_cache(
    trained_model: dict, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    _hub_cache(tmp_path / "hub", "someone/fidesr-tiny", exported)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    weights = TrainedWeights.load("someone/fidesr-tiny")
    local = TrainedWeights.load(exported)
    assert all(torch.equal(weights.state[k], local.state[k]) for k in local.state)
    lq = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    a = FiDeSRPipeline.from_pretrained("someone/fidesr-tiny", device="cpu")(
        lq, generator=torch.Generator().manual_seed(0)
    )
    b = FiDeSRPipeline.from_pretrained(exported, device="cpu")(lq, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sr, b.sr)
    with pytest.raises(ModelFileError, match="not in the Hugging Face cache.*hf download someone/other"):
        TrainedWeights.load("someone/other")


def test_fuse_is_diffusers_own_and_exact(trained_model: dict) -> None:
    """diffusers' fuse_lora + unload_lora gives base + scale * B @ A, bit for bit, on the three adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    backbone, _, _ = TrainedWeights.load(trained_model["ckpt"]).build()
    expected = {}
    for name, module in backbone.unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            (adapter,) = [a for a in module.active_adapters if a in module.lora_A]
            expected[name] = (
                module.get_base_layer().weight.detach() + module.get_delta_weight(adapter).detach()
            )
    assert len(expected) == sum(len(m) for m in backbone.lora_split.values())
    backbone.fuse_lora()
    fused = dict(backbone.unet.named_modules())
    assert not any(isinstance(m, BaseTunerLayer) for m in fused.values()) and not backbone.lora_split
    assert max(float((fused[n].weight - w).abs().max()) for n, w in expected.items()) == 0.0


def test_lightning_load_from_checkpoint_says_what_to_use(trained_model: dict) -> None:
    from fidesr.model import FiDeSRModule

    with pytest.raises(NotImplementedError, match="FiDeSRPipeline.from_pretrained.*ckpt_path"):
        FiDeSRModule.load_from_checkpoint(trained_model["ckpt"])


def test_folder_errors_name_the_file(exported: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / LORA_FILE).write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match=LORA_FILE):
        TrainedWeights.load(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        TrainedWeights.load(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="empty is not an exported fidesr model: no config.json"):
        TrainedWeights.load(tmp_path / "empty")


def test_eval_checkpoint_mode_takes_an_exported_folder(exported: Path, tmp_path: Path) -> None:
    """fidesr-eval checkpoint=DIR lq_dir=... gt_dir=... "metrics=[psnr]" output_dir=... writes per_image.csv,
    through the same loader and tiling options as fidesr-upscale."""
    from hydra import compose, initialize_config_module

    from fidesr.cli.eval import run
    from fidesr.data.imageio import save_image

    g = torch.Generator().manual_seed(4)
    for i in range(2):
        lq = torch.rand(3, 16, 16, generator=g)
        save_image(lq, tmp_path / "lq" / f"im{i}.png")
        save_image(
            torch.nn.functional.interpolate(lq[None], scale_factor=4, mode="bicubic")[0].clamp(0, 1),
            tmp_path / "gt" / f"im{i}.png",
        )
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"checkpoint={exported}",
                f"lq_dir={tmp_path / 'lq'}",
                f"gt_dir={tmp_path / 'gt'}",
                "metrics=[psnr]",
                f"output_dir={tmp_path / 'out'}",
                "device=cpu",
                "progress=false",
                "num_workers=0",
                "tile_size=4",
                "tile_overlap=1",
            ],
        )
    result = run(cfg)
    rows = (tmp_path / "out" / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("name,psnr") and len(rows) == 3 and result.summary["psnr"] > 10
    # A second run into the same folder with one LQ image scores that image alone: refused while the
    # first run's images are there, then overwrite=true replaces them (before: "images: 2", both averaged).
    (tmp_path / "lq" / "im1.png").unlink()
    (tmp_path / "gt" / "im1.png").unlink()
    with pytest.raises(ConfigValueError, match="already holds 2 SR image"):
        run(cfg)
    cfg.overwrite = True
    run(cfg)
    assert "- images: 1" in (tmp_path / "out" / "summary.md").read_text()
    assert sorted(p.name for p in (tmp_path / "out" / "sr").rglob("*.png")) == ["im0.png"]


def test_a_hub_snapshot_may_link_into_its_own_repository_only(exported: Path, tmp_path: Path) -> None:
    """A snapshot folder given directly loads (its files link into ../../blobs, as huggingface_hub lays
    them out); a link leading out of the repository folder is refused."""
    from fidesr.errors import UntrustedConfigError

    snapshot = _hub_cache(tmp_path / "hub", "someone/fidesr-tiny", exported) / "snapshots" / ("a" * 40)
    assert TrainedWeights.load(snapshot).state.keys() == TrainedWeights.load(exported).state.keys()
    outside = tmp_path / LORA_FILE
    shutil.copyfile(exported / LORA_FILE, outside)
    (snapshot / LORA_FILE).unlink()
    (snapshot / LORA_FILE).symlink_to(outside)
    with pytest.raises(UntrustedConfigError, match="is a link to .*outside the model folder"):
        TrainedWeights.load(snapshot)
