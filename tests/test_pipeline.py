"""FiDeSRPipeline: the one loader (checkpoint, exported folder, official .pkl), tiling, LFIM knobs, large images.

All on the tiny backbone with random (non-zero) LoRA and LRRB weights, so that every loading path has
something to get wrong. Tolerances: the fused (merged) UNet against the adapter UNet differs by float32
rounding only (1e-4 on [0,1] images); tiled against untiled within one tile 1e-3 (the acceptance bound;
measured ~1e-5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fidesr.errors import ModelFileError
from fidesr.modelio import TrainedWeights, trained_state
from fidesr.pipeline import FiDeSRPipeline
from fidesr.tiling import seam_score, tile_borders, tile_starts


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _smooth_lq(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A photo-like test input [1,3,h,w] in [0,1]: smooth colour fields plus mild texture."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=size, mode="bicubic", align_corners=False)
    return (base + 0.08 * torch.rand(1, 3, *size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def trained(trained_model: dict) -> dict:
    return trained_model


@pytest.fixture(scope="module")
def pipe(trained: dict) -> FiDeSRPipeline:
    return FiDeSRPipeline.from_pretrained(trained["ckpt"], device="cpu")


def test_checkpoint_pipeline_matches_the_training_model(trained: dict, pipe: FiDeSRPipeline) -> None:
    lq = _smooth_lq((32, 40))
    ref = trained["live"](lq, generator=_seeded())
    out = pipe(lq, generator=_seeded())
    assert out.sr.shape == (1, 3, 128, 160) and out.sr.dtype == torch.float32
    assert 0 <= out.sr.min() and out.sr.max() <= 1
    assert (out.sr - ref.sr).abs().max() < 1e-4  # merged LoRA == adapters, loaded LRRB == trained LRRB
    # The LoRA really is merged and gone: plain layers, nothing left for peft to dispatch.
    assert type(pipe.backbone.unet.conv_in) is torch.nn.Conv2d and not pipe.backbone.lora_split
    assert pipe.lfim is not None and pipe.min_lq_size == 32  # rebuilt from the stored config


def test_one_tile_gives_the_untiled_result(pipe: FiDeSRPipeline) -> None:
    lq = _smooth_lq((48, 40))  # latent 24x20: one latent tile, one VAE tile each way
    tiled = pipe(lq, generator=_seeded()).sr
    pipe.tile_size, pipe.vae_tiling = None, False
    try:
        untiled = pipe(lq, generator=_seeded()).sr
    finally:
        pipe.tile_size, pipe.vae_tiling = 96, True
    assert (tiled - untiled).abs().max() < 1e-3


def test_tile_starts_cover_the_axis_with_the_overlap() -> None:
    assert tile_starts(64, 96, 32) == [0]
    for size, tile, overlap in [(128, 32, 8), (512, 96, 32), (100, 96, 32), (1000, 224, 32)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_lfim_strengths_per_call(pipe: FiDeSRPipeline, trained: dict) -> None:
    lq = _smooth_lq((32, 32), seed=3)
    default = pipe(lq, generator=_seeded()).sr
    off = pipe(lq, lf_scale=0.0, hf_scale=0.0, generator=_seeded()).sr
    strong = pipe(lq, lf_scale=0.0, hf_scale=1.0, generator=_seeded()).sr
    no_lfim = FiDeSRPipeline(pipe.backbone, pipe.lrrb, None, min_lq_size=32)(lq, generator=_seeded()).sr
    assert torch.equal(off, no_lfim)  # both strengths 0 == no LFIM at all
    assert (default - off).abs().max() > 1e-4 and (strong - default).abs().max() > 1e-4
    plain = pipe(lq, color_fix="none", generator=_seeded()).sr
    assert (plain - default).abs().max() > 1e-4
    with pytest.raises(ValueError, match="color_fix"):
        pipe(lq, color_fix="bogus")


def test_export_round_trip_is_exact(trained: dict, pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    from fidesr.cli.export import main

    folder = tmp_path / "export"
    assert main([str(trained["ckpt"]), "-o", str(folder)]) == 0
    with pytest.raises(SystemExit):  # an export is there already: refused without --overwrite
        main([str(trained["ckpt"]), "-o", str(folder)])
    a, b = TrainedWeights.load(trained["ckpt"]), TrainedWeights.load(folder)
    assert json.loads(json.dumps(a.config)) == b.config
    assert a.state.keys() == b.state.keys() and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 2 * sum(v.numel() * v.element_size() for v in a.state.values()) + 65536
    lq = _smooth_lq((32, 40), seed=5)
    from_folder = FiDeSRPipeline.from_pretrained(folder, device="cpu")(lq, generator=_seeded()).sr
    assert torch.equal(from_folder, pipe(lq, generator=_seeded()).sr)
    # The pipeline pairs loading with saving: what it loaded, it writes again, unchanged.
    again = pipe.save_pretrained(tmp_path / "again")
    c = TrainedWeights.load(again)
    assert all(torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_official_pkl_gives_the_checkpoint_output(
    trained: dict, pipe: FiDeSRPipeline, tmp_path: Path
) -> None:
    """An official-format .pkl written from the same tensors: module lists, rank, LoRA state, LRRB state."""
    backbone, lrrb = trained["backbone"], trained["lrrb"]
    pkl = tmp_path / "fidesr.pkl"
    torch.save(
        {
            "unet_lora_encoder_modules": backbone.lora_split["default_encoder"],
            "unet_lora_decoder_modules": backbone.lora_split["default_decoder"],
            "unet_lora_others_modules": backbone.lora_split["default_others"],
            "lora_rank_unet": 8,
            "state_dict_unet": {k: v.clone() for k, v in backbone.unet.state_dict().items() if "lora" in k},
            "lrrb_state_dict": {k: v.clone() for k, v in lrrb.state_dict().items()},
        },
        pkl,
    )
    official = FiDeSRPipeline.from_pretrained(pkl, pretrained=trained["folder"], device="cpu", min_lq_size=32)
    lq = _smooth_lq((40, 32), seed=7)
    assert (official(lq, generator=_seeded()).sr - pipe(lq, generator=_seeded()).sr).abs().max() < 1e-5


def test_loading_errors_name_the_problem(trained: dict, tmp_path: Path) -> None:
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("backbone.")}
    bad = tmp_path / "nolora.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(ModelFileError, match="holds no LoRA tensors"):
        FiDeSRPipeline.from_pretrained(bad, device="cpu")
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "down_blocks" not in k}
    torch.save(ckpt, bad)
    with pytest.raises(ModelFileError, match="LoRA tensors missing"):  # one line for the user, no traceback
        FiDeSRPipeline.from_pretrained(bad, device="cpu")
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ModelFileError, match="no fidesr config"):
        FiDeSRPipeline.from_pretrained(bad, device="cpu")
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        FiDeSRPipeline.from_pretrained(fake, device="cpu")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["ckpt"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated.ckpt"):
        FiDeSRPipeline.from_pretrained(truncated, device="cpu")


def test_bf16_pipeline_runs_close_to_fp32(trained: dict, pipe: FiDeSRPipeline) -> None:
    lq = _smooth_lq((32, 32), seed=9)
    bf16 = FiDeSRPipeline.from_pretrained(trained["ckpt"], device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.backbone.alphas_cumprod.dtype == torch.float32
    out = bf16(lq, generator=_seeded()).sr
    assert out.dtype == torch.float32 and (out - pipe(lq, generator=_seeded()).sr).abs().mean() < 0.05


def test_trained_state_of_live_modules_is_the_checkpoint_state(trained: dict) -> None:
    state = TrainedWeights.load(trained["ckpt"]).state
    live = trained_state(trained["backbone"], trained["lrrb"])
    assert live.keys() == state.keys() and all(torch.equal(live[k], state[k]) for k in state)


# Forced-small tiles on a 1024 px output: latent tiles of 32 latent px, VAE decoder tiles of 64 latent px and
# encoder tiles of 512 px, so every stage is split several ways (the tiny VAE's factor is 4: latent 256).
SMALL_TILES = {"tile_size": 32, "vae_decoder_tile": 64, "vae_encoder_tile": 512}


def _small_tiles(overlap: int) -> dict:
    return {
        **SMALL_TILES,
        "tile_overlap": overlap,
        "vae_decoder_overlap": 2 * overlap,
        "vae_encoder_overlap": 16 * overlap,
    }


def _borders(overlap: int, f: int) -> list[int]:
    """Output px where the tiles of ``_small_tiles(overlap)`` start or end, on a 1024 px output with VAE
    factor ``f``: latent tiles, decoder tiles (latent units) and encoder tiles (pixel units / f)."""
    n = 1024 // f
    return sorted(
        set(
            tile_borders(n, 32, overlap, f)
            + tile_borders(n, 64, 2 * overlap, f)
            + tile_borders(n, 512 // f, 16 * overlap // f, f)
        )
    )


LARGE_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time, torch
    torch.set_num_threads(1)
    from fidesr.data.demo import skimage_data_dir
    from fidesr.data.imageio import load_image
    from fidesr.pipeline import FiDeSRPipeline
    ckpt, tiles, n, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pipe = FiDeSRPipeline.from_pretrained(ckpt, device="cpu", **tiles)
    photo = load_image(skimage_data_dir() / "astronaut.png")[None]
    lq = torch.nn.functional.interpolate(photo, size=(n, n), mode="area")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.time()
    sr = pipe(lq, generator=torch.Generator().manual_seed(0)).sr
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(sr, out)
    print("RESULT", json.dumps({"base_gib": base / 2**20, "peak_gib": peak / 2**20, "seconds": time.time() - t}))
""")


@pytest.fixture(scope="module")
def large_run(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 256 x 256 LQ -> 1024 x 1024 run with forced-small tiles, in a fresh process (for its peak RSS)."""
    d = tmp_path_factory.mktemp("large")
    (d / "large.py").write_text(LARGE_SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            str(d / "large.py"),
            str(trained["ckpt"]),
            json.dumps(_small_tiles(8)),
            "256",
            str(d / "sr.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.split("RESULT", 1)[1]), "sr": torch.load(d / "sr.pt")}


@pytest.mark.slow
def test_small_tiles_on_a_1024px_output_leave_no_seam(large_run: dict, pipe: FiDeSRPipeline) -> None:
    """Seam measure (fidesr.tiling.seam_score): mean |step| across every tile border (latent tiles and VAE
    tiles, in output px) over the mean |step| everywhere. A seamless image scores ~1; the same tiles
    stitched without overlap (no blending possible) score ~8, checked here so the measure can see seams."""
    sr, f = large_run["sr"], pipe.backbone.vae_scale_factor
    assert sr.shape == (1, 3, 1024, 1024)
    assert seam_score(sr, _borders(8, f), _borders(8, f)) < 1.3  # measured 0.99
    from fidesr.data.demo import skimage_data_dir
    from fidesr.data.imageio import load_image

    lq = F.interpolate(load_image(skimage_data_dir() / "astronaut.png")[None], size=(256, 256), mode="area")
    hard = FiDeSRPipeline(pipe.backbone, pipe.lrrb, pipe.lfim, min_lq_size=32, **_small_tiles(0))
    assert seam_score(hard(lq, generator=_seeded()).sr, _borders(0, f), _borders(0, f)) > 3.0  # measured 7.6


@pytest.mark.slow
def test_large_image_completes_in_bounded_memory(large_run: dict) -> None:
    """256 x 256 LQ -> 1024 x 1024 with forced-small tiles (the 1024 -> 4096 px run is in experiments/bench;
    on this project's 2-core machines a 512 px LQ alone takes minutes).

    Bound: 0.6 GiB above the RSS of the loaded model (measured 0.22 GiB). The image-sized float32 buffers
    (upsampled input, model input, blend accumulators, LFIM's detail map, SR, colour-fix temporaries) are
    12 MiB each at 1024^2 x 3; one 512 px VAE tile of the tiny VAE holds 32 MiB per 32-channel activation.
    The same image untiled needs 1.06 GiB above the model (the VAE at full size and the tiny UNet's
    full-resolution attention over 128^2 latent tokens), and that part grows with the image.
    """
    assert large_run["peak_gib"] - large_run["base_gib"] < 0.6, large_run


def test_eval_checkpoint_mode_applies_lfim_strengths(trained: dict, tmp_path: Path) -> None:
    """fidesr-eval checkpoint=... upscales with the pipeline; LFIM strengths change only the output."""
    from hydra import compose, initialize_config_module

    from fidesr.cli.eval import run
    from fidesr.data.imageio import load_image, save_image

    lq_dir, gt_dir = tmp_path / "lq", tmp_path / "gt"
    for i in range(2):
        lq = _smooth_lq((16, 16), seed=i)[0]
        save_image(lq, lq_dir / f"im{i}.png")
        save_image(
            F.interpolate(lq[None], scale_factor=4, mode="bicubic")[0].clamp(0, 1), gt_dir / f"im{i}.png"
        )
    outs = {}
    for lf in (0.0, 0.4):
        with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
            cfg = compose(
                config_name="eval",
                overrides=[
                    f"checkpoint={trained['ckpt']}",
                    f"lq_dir={lq_dir}",
                    f"gt_dir={gt_dir}",
                    "metrics=[psnr]",
                    f"output_dir={tmp_path / f'out{lf}'}",
                    "device=cpu",
                    f"lfim.lf_scale={lf}",
                    "lfim.hf_scale=0",
                ],
            )
        result = run(cfg)
        assert result.summary["psnr"] and (tmp_path / f"out{lf}" / "per_image.csv").is_file()
        outs[lf] = load_image(next((tmp_path / f"out{lf}").rglob("im0.png")))
    assert outs[0.0].shape == (3, 64, 64)
    assert (outs[0.0] - outs[0.4]).abs().max() > 1 / 255


def test_lrrb_hf_analysis_tool_reports_the_reduction(trained: dict, tmp_path: Path) -> None:
    """experiments/lrrb_hf/analyze.py: per-image HF errors before/after LRRB and the relative change."""
    import csv
    import importlib.util

    from fidesr.components.hf_error import high_frequency_error
    from fidesr.data.imageio import save_image

    for i in range(2):
        lq = _smooth_lq((16, 16), seed=i)[0]
        save_image(lq, tmp_path / "lq" / f"im{i}.png")
        save_image(
            F.interpolate(lq[None], scale_factor=4, mode="bicubic")[0].clamp(0, 1),
            tmp_path / "gt" / f"im{i}.png",
        )
    path = Path(__file__).resolve().parents[1] / "experiments" / "lrrb_hf" / "analyze.py"
    spec = importlib.util.spec_from_file_location("lrrb_hf_analyze", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(
        [
            str(trained["ckpt"]),
            "--lq",
            str(tmp_path / "lq"),
            "--gt",
            str(tmp_path / "gt"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert rc in (0, None)
    rows = list(csv.DictReader((tmp_path / "out" / "lrrb_hf.csv").open()))
    assert len(rows) >= 2 and (tmp_path / "out" / "lrrb_hf.md").is_file()
    # The tool's HF error is the library's: a residual equal to the ideal one has zero error.
    z = torch.randn(1, 4, 8, 8)
    assert float(high_frequency_error(z, z)[0]) == 0.0


# ---------------------------------------------------------------- a non-finite result is an error, not a black PNG
@pytest.fixture(scope="module")
def overflowing(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with finite weights (so it loads) whose LRRB bias is near float32's maximum: the SR
    latent overflows and the decoded image is NaN."""
    ckpt = torch.load(trained["ckpt"], weights_only=True)
    bias = ckpt["state_dict"]["lrrb.out_conv.bias"]
    ckpt["state_dict"]["lrrb.out_conv.bias"] = torch.full_like(bias, 3e38)
    path = tmp_path_factory.mktemp("overflow") / "overflow.ckpt"
    torch.save(ckpt, path)
    return path


def test_non_finite_images_are_named_per_image(pipe: FiDeSRPipeline) -> None:
    """In a batch, only the image whose result is not finite is reported (its index); the others come back."""
    from fidesr.errors import FidesrError, NonFiniteOutputError

    lq = torch.cat([_smooth_lq((16, 16)), _smooth_lq((16, 16), seed=1)])
    lq[1, :, 3, 3] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="not finite") as info:
        pipe(lq, generator=_seeded())
    assert isinstance(info.value, FidesrError) and info.value.indices == [1]
    good = info.value.output.sr[0]
    assert torch.isfinite(good).all()
    torch.testing.assert_close(good, pipe(lq[:1], generator=_seeded()).sr[0])


def test_upscale_writes_no_black_png_and_fails(overflowing: Path, tmp_path: Path, capsys) -> None:
    """fidesr-upscale names each image, writes nothing for it, exits 1 (the model's tensors are finite:
    only the result shows it)."""
    from fidesr.cli.upscale import main
    from fidesr.data.imageio import save_image

    for i in range(2):
        save_image(_smooth_lq((16, 16), seed=i)[0], tmp_path / "in" / f"im{i}.png")
    argv = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(overflowing)]
    assert main([*argv, "--device", "cpu", "--no-progress", "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    for i in range(2):
        assert f"error {tmp_path / 'in' / f'im{i}.png'}: the model's output is not finite" in err
    assert "Traceback" not in err and not list((tmp_path / "out").iterdir())


def test_the_app_saves_no_non_finite_result(pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    from fidesr.app import upscale_request
    from fidesr.errors import NonFiniteOutputError

    image = _smooth_lq((16, 16))[0]
    image[:, 2, 2] = float("nan")  # any source of NaN: the request's result is checked, not the weights
    with pytest.raises(NonFiniteOutputError):
        upscale_request(pipe, image, None, None, "adain", tmp_path / "app")
    assert not (tmp_path / "app").exists() or not list((tmp_path / "app").iterdir())


def test_eval_checkpoint_mode_refuses_a_non_finite_result(overflowing: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from fidesr.cli.eval import run
    from fidesr.data.imageio import save_image
    from fidesr.errors import NonFiniteOutputError

    save_image(_smooth_lq((16, 16))[0], tmp_path / "lq" / "im0.png")
    save_image(torch.rand(3, 64, 64), tmp_path / "gt" / "im0.png")
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        cfg = compose(
            config_name="eval",
            overrides=[
                f"checkpoint={overflowing}",
                f"lq_dir={tmp_path / 'lq'}",
                f"gt_dir={tmp_path / 'gt'}",
                "metrics=[psnr]",
                f"output_dir={tmp_path / 'out'}",
                "device=cpu",
                "progress=false",
            ],
        )
    with pytest.raises(NonFiniteOutputError, match=r"lq/im0.png: the model's output is not finite"):
        run(cfg)
    assert not list((tmp_path / "out").rglob("*.png"))
