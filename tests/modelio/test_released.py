"""Released models by name (fidesr.modelio.released) and the OSEDiff / PiSA-SR layouts (fidesr.modelio.layouts).

Each released layout is written by the test with the key names of the official save code (OSEDiff's
``OSEDiff_gen.save_model``, PiSA-SR's ``PiSASR.save_model``, AdcSR's merged ``osediff.pkl``) from a tiny
backbone with random LoRA, then loaded through ``FiDeSRPipeline.from_pretrained`` and run. Downloads: a cache
laid out as huggingface_hub lays it, and the offline messages (the suite runs with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import pytest
import torch

from fidesr.errors import FidesrError, ModelFileError
from fidesr.modelio import RELEASED, TrainedWeights, locate_model, model_notes
from fidesr.pipeline import FiDeSRPipeline

PIPE_KW = dict(device="cpu", min_lq_size=16, color_fix="none")


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _lq(seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _randomise(*modules: torch.nn.Module, seed: int = 5) -> None:
    """'Trained' LoRA: both A and B random (B = 0 at init would make every adapter a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def osediff(tiny_backbone_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny OSEDiff model (UNet LoRA rank 4, VAE-encoder LoRA rank 4, trained conv_in, t = 999, x0) and
    its file in OSEDiff_gen.save_model's layout (osediff.py 131-140)."""
    from fidesr.backbone.sd import StableDiffusionBackbone

    backbone = StableDiffusionBackbone.from_pretrained(
        tiny_backbone_folder, lora_rank=4, vae_lora_rank=4, timestep=999, prediction="x0"
    )
    _randomise(backbone.unet, backbone.vae)
    with torch.no_grad():  # conv_in is fully trained in OSEDiff (set_train, osediff.py 97)
        backbone.unet.conv_in.base_layer.weight.add_(0.1)
    unet_sd, vae_sd = backbone.unet.state_dict(), backbone.vae.state_dict()
    data = {
        # OSEDiff's VAE grep appends a module once per pattern it matches (osediff.py 27-31): duplicates.
        "vae_lora_encoder_modules": [m for m in backbone.vae_lora_modules for _ in range(2)],
        "unet_lora_encoder_modules": backbone.lora_split["default_encoder"],
        "unet_lora_decoder_modules": backbone.lora_split["default_decoder"],
        "unet_lora_others_modules": backbone.lora_split["default_others"],
        "rank_unet": 4,
        "rank_vae": 4,
        "state_dict_unet": {k: v.clone() for k, v in unet_sd.items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.clone() for k, v in vae_sd.items() if "lora" in k},
    }
    pkl = tmp_path_factory.mktemp("osediff") / "osediff.pkl"
    torch.save(data, pkl)
    live = FiDeSRPipeline(backbone, None, None, min_lq_size=16, color_fix="none")
    return {"pkl": pkl, "data": data, "backbone": backbone, "live": live, "folder": tiny_backbone_folder}


def test_osediff_file_runs_osediff_inference(osediff: dict, caplog: pytest.LogCaptureFixture) -> None:
    """Every tensor of the file used (LoRA, conv_in, VAE LoRA): the loaded, fused pipeline gives the live
    model's output; the one-step update is x0 at t = 999, by hand from SD's schedule; the prompt is stated."""
    with caplog.at_level(logging.INFO, logger="fidesr.pipeline"):
        pipe = FiDeSRPipeline.from_pretrained(osediff["pkl"], pretrained=osediff["folder"], **PIPE_KW)
    assert "empty prompt" in caplog.text and "DAPE" in caplog.text
    assert any("DAPE" in n for n in model_notes(pipe)) and pipe.weights.info["method"] == "OSEDiff"
    assert (pipe.backbone.timestep, pipe.backbone.prediction) == (999, "x0")
    out = pipe(_lq(), generator=_seeded(), return_latents=True)
    ref = osediff["live"](_lq(), generator=_seeded())
    assert (out.sr - ref.sr).abs().max() < 1e-4
    # z_H = (z_L - sqrt(1 - abar_999) eps) / sqrt(abar_999), abar from SD 2.1's scaled-linear betas.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = float(torch.cumprod(1 - betas, 0)[999])
    lat = out.latents
    expected = (lat.z_lq - math.sqrt(1 - abar) * lat.residual) / math.sqrt(abar)
    torch.testing.assert_close(lat.z_sr, expected, rtol=1e-4, atol=1e-4)
    # The VAE LoRA and the trained conv_in are part of the mapped weights (so of the output above).
    weights = TrainedWeights.load(osediff["pkl"], pretrained=osediff["folder"])
    assert (
        any(k.startswith("vae.") for k in weights.state) and "unet.conv_in.base_layer.weight" in weights.state
    )


def test_merged_osediff_file_gives_the_same_model(osediff: dict, tmp_path: Path) -> None:
    """AdcSR's osediff.pkl ({"unet": full state dict, "vae": full state dict}, its train.py 71-73)."""
    weights = TrainedWeights.load(osediff["pkl"], pretrained=osediff["folder"])
    backbone, _, _ = weights.build()
    backbone.fuse_lora()
    pkl = tmp_path / "osediff_merged.pkl"
    torch.save({"unet": backbone.unet.state_dict(), "vae": backbone.vae.state_dict()}, pkl)
    pipe = FiDeSRPipeline.from_pretrained(pkl, pretrained=osediff["folder"], **PIPE_KW)
    ref = osediff["live"](_lq(), generator=_seeded())
    assert (pipe(_lq(), generator=_seeded()).sr - ref.sr).abs().max() < 1e-4
    data = torch.load(pkl, weights_only=True)
    data["unet"].pop("conv_out.bias")
    torch.save(data, pkl)
    with pytest.raises(
        ModelFileError, match=r"unet: tensors do not match: 1 missing \(first: conv_out.bias\)"
    ):
        FiDeSRPipeline.from_pretrained(pkl, pretrained=osediff["folder"], **PIPE_KW)


def test_osediff_missing_and_extra_tensors_are_named(osediff: dict, tmp_path: Path) -> None:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in osediff["data"].items()}
    gone = sorted(data["state_dict_unet"])[0]
    del data["state_dict_unet"][gone]
    data["state_dict_unet"]["mid_block.bogus.lora_A.default_others.weight"] = torch.zeros(4, 4)
    bad = tmp_path / "bad.pkl"
    torch.save(data, bad)
    with pytest.raises(ModelFileError) as err:
        TrainedWeights.load(bad, pretrained=osediff["folder"])
    msg = str(err.value)
    assert f"1 missing (first: {gone})" in msg and "1 unexpected (first: mid_block.bogus.lora_A" in msg
    assert "bad.pkl state_dict_unet" in msg and "\n" not in msg
    del data["rank_vae"]
    torch.save(data, bad)
    with pytest.raises(ModelFileError, match=r"released osediff file but lacks the keys \['rank_vae'\]"):
        TrainedWeights.load(bad, pretrained=osediff["folder"])


def test_osediff_model_exports_and_reloads_exactly(osediff: dict, tmp_path: Path) -> None:
    """fidesr-export of the OSEDiff file: the VAE-encoder LoRA and conv_in go to extras.safetensors; the
    folder reloads bit for bit and runs the same model."""
    from fidesr.cli.export import main

    assert main([str(osediff["pkl"]), "-o", str(tmp_path / "export")]) == 0
    weights = TrainedWeights.load(osediff["pkl"], pretrained=osediff["folder"])
    folder = tmp_path / "export"
    assert (folder / "extras.safetensors").is_file()
    folder = weights.save_pretrained(tmp_path / "export", overwrite=True)  # base: the tiny model
    again = TrainedWeights.load(folder)
    assert again.state.keys() == weights.state.keys()
    assert all(torch.equal(again.state[k], weights.state[k]) for k in weights.state)
    a = FiDeSRPipeline.from_pretrained(folder, **PIPE_KW)(_lq(), generator=_seeded()).sr
    b = osediff["live"](_lq(), generator=_seeded()).sr
    assert (a - b).abs().max() < 1e-4


def test_pisasr_file_runs_both_sets_with_pisasr_strengths(
    make_tiny_backbone, tiny_backbone_folder: Path, tmp_path: Path
) -> None:
    """PiSASR.save_model's layout (pisasr.py 296-305); default strengths 1, 1: eps_out = eps_pix +
    (eps_sem - eps_pix), i.e. both sets merged; other strengths weigh the two outputs."""
    backbone = make_tiny_backbone(lora_rank=4, lora_sets=["pix", "sem"])
    _randomise(backbone.unet, seed=7)
    data = {f"unet_lora_{p}_modules_{s}": backbone.lora_split[f"default_{p}_{s}"]
            for s in ("pix", "sem") for p in ("encoder", "decoder", "others")}  # fmt: skip
    data.update(lora_rank_unet_pix=4, lora_rank_unet_sem=4)
    data["state_dict_unet"] = {k: v.clone() for k, v in backbone.unet.state_dict().items() if "lora" in k}
    pkl = tmp_path / "pisa_sr.pkl"
    torch.save(data, pkl)
    pipe = FiDeSRPipeline.from_pretrained(pkl, pretrained=tiny_backbone_folder, **PIPE_KW)
    assert pipe.backbone.lora_sets == ("pix", "sem") and pipe.weights.info["method"] == "PiSA-SR"
    default = pipe(_lq(), generator=_seeded(), return_latents=True).latents
    z_lq, e = default.z_lq, pipe.backbone.encode_prompt([""])
    t = torch.tensor([1])
    with torch.no_grad():
        backbone.unet.set_adapters([a for a in backbone.lora_split if a.endswith("_pix")])
        eps_pix = backbone.unet(z_lq, t, encoder_hidden_states=e).sample
        backbone.unet.set_adapters(list(backbone.lora_split))
        eps_sem = backbone.unet(z_lq, t, encoder_hidden_states=e).sample
    assert (eps_sem - eps_pix).abs().max() > 1e-3
    torch.testing.assert_close(
        default.z_sr, z_lq - (1 * eps_pix + 1 * (eps_sem - eps_pix)), rtol=1e-4, atol=1e-5
    )
    mixed = pipe(_lq(), generator=_seeded(), return_latents=True, strengths={"pix": 0.5, "sem": 0.25}).latents
    torch.testing.assert_close(
        mixed.z_sr, z_lq - (0.5 * eps_pix + 0.25 * (eps_sem - eps_pix)), rtol=1e-4, atol=1e-5
    )
    folder = pipe.weights.save_pretrained(tmp_path / "export")  # one diffusers LoRA file per set
    assert (folder / "pix" / "pytorch_lora_weights.safetensors").is_file()
    again = FiDeSRPipeline.from_pretrained(folder, **PIPE_KW)(_lq(), generator=_seeded(), return_latents=True)
    torch.testing.assert_close(again.latents.z_sr, default.z_sr, rtol=1e-5, atol=1e-6)
    data["lora_rank_unet_sem"] = 8
    torch.save(data, pkl)
    with pytest.raises(ModelFileError, match="lora_rank_unet_pix = 4 and lora_rank_unet_sem = 8 differ"):
        TrainedWeights.load(pkl, pretrained=tiny_backbone_folder)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("FIDESR_MODELS_DIR", str(tmp_path / "models"))
    return cache


def test_offline_released_names_say_what_to_fetch(
    empty_hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fidesr.cli.upscale import main
    from fidesr.data.imageio import save_image

    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    save_image(torch.rand(3, 8, 8), tmp_path / "in.png")
    for argv in (["--model", "fidesr"], []):  # fidesr is also the default
        assert main([str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), *argv, "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("fidesr-upscale: error: released model 'fidesr' (FiDeSR): fidesr.pkl")
        assert "Hub repo jmjin2/FiDeSR" in err and "`hf download jmjin2/FiDeSR fidesr.pkl`" in err
        assert "FIDESR_OFFLINE=1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(
        FidesrError, match="Guaishou74851/AdcSR.*hf download Guaishou74851/AdcSR weight/pretrained"
    ):
        locate_model("osediff")
    with pytest.raises(
        FidesrError, match=r"pisa_sr.pkl is on Google Drive only: download it by hand from https://drive"
    ):
        locate_model("pisasr")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "pisa_sr.pkl").write_bytes(b"x")
    assert locate_model("pisasr") == str(tmp_path / "models" / "pisa_sr.pkl")
    with pytest.raises(FidesrError, match=r"model not found: nope \(.*fidesr, osediff, pisasr"):
        locate_model("nope")


def _lay_into_cache(cache: Path, repo_id: str, filename: str, data: bytes, revision: str) -> Path:
    """``filename`` of ``repo_id`` at commit ``revision`` as huggingface_hub lays it out (blob by content,
    snapshot link, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / revision / filename
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(*[".."] * (len(Path(filename).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return link


def test_released_fidesr_from_the_hf_cache_by_name(
    trained_model: dict, empty_hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'fidesr' resolves to the cached jmjin2/FiDeSR fidesr.pkl (offline: no request) and runs; the
    revision is overridable; fidesr-upscale --model fidesr writes the image."""
    from fidesr.cli.upscale import main
    from fidesr.data.imageio import save_image

    backbone, lrrb = trained_model["backbone"], trained_model["lrrb"]
    pkl = tmp_path / "fidesr.pkl"
    torch.save(
        {
            **{
                f"unet_lora_{p}_modules": backbone.lora_split[f"default_{p}"]
                for p in ("encoder", "decoder", "others")
            },
            "lora_rank_unet": 8,
            "state_dict_unet": {k: v.clone() for k, v in backbone.lora_state_dict().items()},
            "lrrb_state_dict": lrrb.state_dict(),
        },
        pkl,
    )
    rev = "c" * 40
    cached = _lay_into_cache(empty_hub_cache, "jmjin2/FiDeSR", "fidesr.pkl", pkl.read_bytes(), rev)
    assert Path(locate_model("fidesr")).resolve() == cached.resolve()
    monkeypatch.setenv(RELEASED["fidesr"].revision_env, rev)
    assert Path(locate_model("fidesr")).resolve() == cached.resolve()
    monkeypatch.setenv(RELEASED["fidesr"].revision_env, "d" * 40)
    with pytest.raises(FidesrError, match=f"revision {'d' * 40}.*--revision {'d' * 40}"):
        locate_model("fidesr")
    monkeypatch.delenv(RELEASED["fidesr"].revision_env)
    pipe = FiDeSRPipeline.from_pretrained(
        "fidesr", pretrained=trained_model["folder"], device="cpu", min_lq_size=16
    )
    ref = FiDeSRPipeline.from_pretrained(
        pkl, pretrained=trained_model["folder"], device="cpu", min_lq_size=16
    )
    assert torch.equal(pipe(_lq(), generator=_seeded()).sr, ref(_lq(), generator=_seeded()).sr)
    save_image(torch.rand(3, 8, 8), tmp_path / "in.png")
    argv = [str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", "fidesr"]
    assert (
        main(
            [
                *argv,
                "--pretrained",
                str(trained_model["folder"]),
                "--device",
                "cpu",
                "--no-progress",
                "--min-lq-size",
                "8",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "in.png").is_file()


def test_model_options_default_and_aliases() -> None:
    from fidesr.cli.options import check_model_choice, model_source
    from fidesr.cli.upscale import build_parser

    parser = build_parser()
    for argv, model in (
        ([], "fidesr"),
        (["--checkpoint", "x.ckpt"], "x.ckpt"),
        (["--model", "osediff"], "osediff"),
    ):
        args = parser.parse_args(["in.png", "-o", "out", *argv])
        check_model_choice(parser, args)
        assert args.model == model
    args = parser.parse_args(["in.png", "-o", "out", "--official", "f.pkl"])
    check_model_choice(parser, args)
    assert args.model is None
    assert model_source(args) == "f.pkl"  # the deprecated alias loads what --model f.pkl loads
    with pytest.raises(SystemExit):
        check_model_choice(
            parser, parser.parse_args(["in.png", "-o", "o", "--model", "a", "--checkpoint", "b"])
        )


class _Hub:
    """A minimal Hugging Face Hub on 127.0.0.1: ``/{repo}/resolve/{revision}/{file}`` answers HEAD and GET
    with the headers huggingface_hub reads (X-Repo-Commit, ETag, Content-Length)."""

    def __init__(self, files: dict[str, bytes], commit: str) -> None:
        import http.server

        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].lstrip("/").split("/")
                key = "/".join(parts[:2]) + ":" + "/".join(parts[4:]) if len(parts) > 4 else ""
                if parts[2:3] != ["resolve"] or key not in files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                data = files[key]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_released_name_is_fetched_from_a_hub(
    empty_hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online: 'fidesr' is fetched from the Hub (here one on 127.0.0.1 via HF_ENDPOINT) into the HF cache at
    the pinned revision; offline afterwards it is found there without a request."""
    import threading

    import huggingface_hub.constants

    data = b"released bytes"
    commit = "e" * 40
    hub = _Hub({"jmjin2/FiDeSR:fidesr.pkl": data}, commit)
    threading.Thread(target=hub.httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("FIDESR_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        path = Path(locate_model("fidesr"))
        assert path.read_bytes() == data and path.is_relative_to(empty_hub_cache)
        assert (
            path.parent.name == commit
            and f"/jmjin2/FiDeSR/resolve/{RELEASED['fidesr'].revision}/fidesr.pkl" in (" ".join(hub.requests))
        )
        with pytest.raises(
            FidesrError, match=r"cannot fetch released model 'osediff'.*hf download Guaishou74851"
        ):
            locate_model("osediff")  # the Hub answers 404
        seen = len(hub.requests)
        monkeypatch.setenv("FIDESR_OFFLINE", "1")
        assert Path(locate_model("fidesr")) == path and len(hub.requests) == seen
    finally:
        hub.httpd.shutdown()
        hub.httpd.server_close()


@pytest.mark.slow  # OSEDiff's own pre-processing enlarges the LQ to 128 px: 512 px outputs on the CPU
def test_eval_with_a_released_file_states_its_prompt(osediff: dict, compose, tmp_path: Path) -> None:
    """fidesr-eval checkpoint=<OSEDiff file>: the SR images, and summary.md names the model and its prompt."""
    from fidesr.cli.eval import model_spec, run
    from fidesr.data.imageio import save_image

    g = torch.Generator().manual_seed(4)
    for i in range(2):
        lq = torch.rand(3, 16, 16, generator=g)
        save_image(lq, tmp_path / "lq" / f"im{i}.png")
        save_image(
            torch.nn.functional.interpolate(lq[None], scale_factor=4)[0], tmp_path / "gt" / f"im{i}.png"
        )
    common = [f"lq_dir={tmp_path / 'lq'}", "device=cpu", "progress=false", "num_workers=0", "metrics=[psnr]"]
    assert model_spec(compose(common, config_name="eval")) == "fidesr"  # lq_dir alone: the released FiDeSR
    cfg = compose(
        [
            *common,
            f"checkpoint={osediff['pkl']}",
            f"pretrained={osediff['folder']}",
            f"gt_dir={tmp_path / 'gt'}",
            f"output_dir={tmp_path / 'out'}",
        ],
        config_name="eval",
    )
    result = run(cfg)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"- model: {osediff['pkl']} (OSEDiff)" in summary and "- prompt: empty prompt" in summary
    assert "DAPE" in summary and result.summary["psnr"] > 5
