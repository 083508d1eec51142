"""fidesr-eval: config composition (pkg://fidesr.conf), folder mode outputs, pairing errors, no-GT mode,
published rows, and the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fidesr.cli.eval import run
from fidesr.metrics.images import save_image
from fidesr.metrics.tables import read_csv


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    wd = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("FIDESR_WEIGHTS_DIR", str(wd))  # empty: only weight-free metrics can run
    monkeypatch.setenv("WANDB_MODE", "disabled")
    home, hub = os.environ.get("TORCH_HOME"), torch.hub._hub_dir
    yield wd
    os.environ.pop("TORCH_HOME", None) if home is None else os.environ.update(TORCH_HOME=home)
    torch.hub._hub_dir = hub


def _images(folder: Path, names: list[str], seed: int, size: int = 48) -> Path:
    g = torch.Generator().manual_seed(seed)
    for n in names:
        base = torch.rand(1, 3, size // 8, size // 8, generator=g)
        save_image(torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear"), folder / n)
    return folder


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    names = ["a.png", "b.png", "c.png"]
    return _images(tmp_path / "sr", names, 0), _images(tmp_path / "gt", names, 1)


def _cfg(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        return compose("eval", overrides=["progress=false", "num_workers=0", "device=cpu", *overrides])


def test_default_config_is_the_protocol() -> None:
    cfg = _cfg()
    assert list(cfg.metrics) == [
        "psnr",
        "ssim",
        "lpips",
        "dists",
        "fid",
        "niqe",
        "musiq",
        "maniqa",
        "clipiqa",
    ]
    assert [m for m, o in cfg.metrics.items() if o.required] == ["psnr", "ssim"]
    p = cfg.protocol
    assert p.crop_border == 0 and p.test_y_channel and p.color_space == "ycbcr" and p.ssim_impl == "separable"
    assert list(_cfg("metrics=fast").metrics) == ["psnr", "ssim", "niqe"]


def test_folder_mode_writes_tables(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sr, gt = folders
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="weights missing.*: musiq"):
        result = run(
            _cfg(
                f"sr_dir={sr}",
                f"gt_dir={gt}",
                "metrics=[psnr,ssim,musiq]",
                f"output_dir={out}",
                "paper_rows=realsr",
                "batch_size=2",
            )
        )
    per_image = read_csv(out / "per_image.csv")
    assert list(per_image[0]) == ["name", "psnr", "ssim", "musiq"]
    assert [r["name"] for r in per_image] == ["a.png", "b.png", "c.png"]
    assert all(isinstance(r["psnr"], float) and r["musiq"] is None for r in per_image)
    summary = read_csv(out / "summary.csv")
    assert summary[0]["label"] == "sr" and summary[0]["images"] == 3
    assert summary[0]["psnr"] == pytest.approx(sum(r["psnr"] for r in per_image) / 3)
    assert summary[0]["musiq"] == "n/a (weights missing)"
    assert [r["label"] for r in summary[1:]] == ["FiDeSR (paper)", "OSEDiff (released outputs, its log)"]
    assert summary[1]["psnr"] == 26.02
    md = (out / "summary.md").read_text()
    assert "| label | PSNR ↑ | SSIM ↑ | MUSIQ ↑ |" in md and "n/a (weights missing)" in md
    assert result.summary["musiq"] == "n/a (weights missing)"


def test_batching_does_not_change_values(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sr, gt = folders
    a = run(_cfg(f"sr_dir={sr}", f"gt_dir={gt}", "metrics=[psnr,ssim]", f"output_dir={tmp_path / '1'}"))
    b = run(
        _cfg(
            f"sr_dir={sr}",
            f"gt_dir={gt}",
            "metrics=[psnr,ssim]",
            f"output_dir={tmp_path / '3'}",
            "batch_size=3",
        )
    )
    for ra, rb in zip(a.per_image, b.per_image, strict=True):
        assert ra["ssim"] == pytest.approx(rb["ssim"], abs=1e-12) and ra["psnr"] == pytest.approx(
            rb["psnr"], abs=1e-4
        )


def test_unmatched_names_are_listed(tmp_path: Path) -> None:
    sr = _images(tmp_path / "sr", ["a.png", "b.png", "extra_sr.png"], 0)
    gt = _images(tmp_path / "gt", ["a.png", "b.jpg", "extra_gt.png"], 1)  # b.png ~ b.jpg: matched by stem
    with pytest.raises(
        ValueError, match=r"1 SR image\(s\) without GT \[extra_sr\]; 1 GT image\(s\) without SR \[extra_gt\]"
    ):
        run(_cfg(f"sr_dir={sr}", f"gt_dir={gt}", "metrics=[psnr]", f"output_dir={tmp_path / 'o'}"))


def test_no_gt_runs_only_no_reference_metrics(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sr, _ = folders
    with pytest.warns(UserWarning, match="weights missing.*: niqe"):
        result = run(_cfg(f"sr_dir={sr}", "metrics=[psnr,ssim,niqe,fid]", f"output_dir={tmp_path / 'o'}"))
    assert result.metrics == ["niqe"] and result.summary == {"niqe": "n/a (weights missing)"}
    assert list(read_csv(tmp_path / "o" / "per_image.csv")[0]) == ["name", "niqe"]


def test_console_script(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """The installed entry point: Hydra's @main with config_path='pkg://fidesr.conf'."""
    sr, gt = folders
    exe = Path(sys.executable).with_name("fidesr-eval")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fidesr.cli.eval"]
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            *cmd,
            f"sr_dir={sr}",
            f"gt_dir={gt}",
            "metrics=[psnr,ssim]",
            f"output_dir={out}",
            "progress=false",
            "num_workers=0",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| sr |" in proc.stdout
    assert (out / "per_image.csv").is_file() and (out / "summary.md").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()  # the run's config is kept beside the results


def test_16bit_and_greyscale_files_score_as_their_8bit_copies(tmp_path: Path) -> None:
    """The same picture as 8-bit RGB, 16-bit RGB, 8-bit grey and 16-bit grey: identical scores (16-bit grey
    used to read as all white)."""
    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    gt, sr8, sr16 = tmp_path / "gt", tmp_path / "sr8", tmp_path / "sr16"
    for d in (gt, sr8, sr16):
        d.mkdir()
    noisy = np.clip(rgb.astype(int) + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    noisy_grey = np.clip(grey.astype(int) + rng.integers(-20, 21, grey.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(gt / "rgb.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(gt / "grey.png")
    Image.fromarray(noisy).save(sr8 / "rgb.png")
    Image.fromarray(noisy_grey).save(sr8 / "grey.png")  # 8-bit greyscale ("L")
    cv2.imwrite(str(sr16 / "rgb.png"), noisy[..., ::-1].astype(np.uint16) * 257)  # 48-bit RGB PNG
    Image.fromarray(noisy_grey.astype(np.uint16) * 257).save(sr16 / "grey.png")  # 16-bit greyscale ("I;16")
    with Image.open(sr16 / "grey.png") as img:
        assert img.mode.startswith("I")
    scores = {}
    for d in (sr8, sr16):
        run(
            _cfg(
                f"sr_dir={d}",
                f"gt_dir={gt}",
                "metrics=[psnr,ssim]",
                f"output_dir={tmp_path / ('out_' + d.name)}",
            )
        )
        scores[d.name] = {
            r["name"]: (r["psnr"], r["ssim"]) for r in read_csv(tmp_path / f"out_{d.name}" / "per_image.csv")
        }
    for name in ("rgb.png", "grey.png"):
        (p8, s8), (p16, s16) = scores["sr8"][name], scores["sr16"][name]
        assert (
            20 < float(p8) < 40 and abs(float(p8) - float(p16)) < 1e-4 and abs(float(s8) - float(s16)) < 1e-6
        ), name


def test_every_unreadable_file_is_listed_before_any_metric(
    folders: tuple[Path, Path], tmp_path: Path, png_bomb
) -> None:
    from fidesr.cli.eval import ImageCheckError

    sr, gt = folders
    good = (sr / "a.png").read_bytes()
    (sr / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    (sr / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    png_bomb(gt / "a.png", side=50_000)
    with pytest.raises(ImageCheckError) as info:
        run(_cfg(f"sr_dir={sr}", f"gt_dir={gt}", "metrics=[psnr]", f"output_dir={tmp_path / 'out'}"))
    message = str(info.value)
    assert "3 unreadable image(s)" in message
    for path in (sr / "b.png", sr / "c.png", gt / "a.png"):
        assert str(path) in message
    assert "2,500,000,000 pixels" in message and not (tmp_path / "out" / "per_image.csv").exists()
    exe = Path(sys.executable).with_name("fidesr-eval")
    proc = subprocess.run(
        [
            str(exe),
            f"sr_dir={sr}",
            f"gt_dir={gt}",
            "metrics=[psnr]",
            f"output_dir={tmp_path / 'o'}",
            "progress=false",
            "num_workers=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "fidesr-eval: error: 3 unreadable image(s)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    from fidesr.cli.eval import ImageCheckError

    sr = _images(tmp_path / "sr", ["a.png", "b.png"], 0, size=48)
    gt = _images(tmp_path / "gt", ["a.png"], 1, size=48)
    _images(gt, ["b.png"], 1, size=40)
    with pytest.raises(ImageCheckError) as info:
        run(_cfg(f"sr_dir={sr}", f"gt_dir={gt}", "metrics=[psnr]", f"output_dir={tmp_path / 'o'}"))
    assert str(info.value) == f"SR {sr / 'b.png'} is 48 x 48 px but GT {gt / 'b.png'} is 40 x 40 px"
    assert not (tmp_path / "o").exists()  # found before any metric ran


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tile_size=-5", "tile_size=-5: must be a finite number >= 0"),
        ("batch_size=0", "batch_size=0: must be a finite number >= 1"),
        ("max_pixels=0", "max_pixels=0: must be a finite number >= 1"),
        ("lfim.lf_scale=inf", "lfim.lf_scale=inf: must be a finite number >= 0"),
        ("lfim.hf_scale=-1", "lfim.hf_scale=-1: must be a finite number >= 0"),
        ("lora_strengths.lambda_sem=nan", "lora_strengths.lambda_sem=nan: must be a finite number"),
        ("tile_size=16", "tile_overlap=32 must be smaller than tile_size=16 (or tile_size=0)"),
    ],
)
def test_bad_numbers_are_refused_before_anything_loads(tmp_path: Path, override: str, message: str) -> None:
    from fidesr.errors import ConfigValueError

    missing = tmp_path / "missing"  # never looked at
    with pytest.raises(ConfigValueError) as info:
        run(_cfg(f"checkpoint={missing}", f"lq_dir={missing}", override, f"output_dir={tmp_path / 'o'}"))
    assert str(info.value) == message and not (tmp_path / "o").exists()


def test_a_full_disk_is_one_error_naming_the_file(
    folders: tuple[Path, Path], tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]
) -> None:
    from fidesr.errors import DiskFullError, report_errors

    sr, gt = folders
    out = tmp_path / "o"
    cfg = _cfg(f"sr_dir={sr}", f"gt_dir={gt}", "metrics=[psnr]", f"output_dir={out}")
    with full_disk(20), pytest.raises(SystemExit):  # per_image.csv is the first file written
        report_errors("fidesr-eval", lambda: run(cfg))
    err = capsys.readouterr().err
    assert err == f"fidesr-eval: error: no space left writing {out / 'per_image.csv'} (File too large)\n"
    assert not list(out.iterdir())  # no partial file
    with full_disk(200), pytest.raises(DiskFullError, match=f"^no space left writing {out / 'summary.md'} "):
        run(cfg)  # the CSVs fit, the summary does not
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.csv"]


def test_checkpoint_mode_refuses_an_earlier_runs_images_before_loading(tmp_path: Path) -> None:
    """A second checkpoint-mode run into the same output_dir would score the first run's images too: refused
    with one line naming the folder, before the (here missing) model is looked at; other files stay."""
    from fidesr.errors import ConfigValueError

    out = tmp_path / "o"
    _images(out / "sr", ["old.png"], 0)
    (out / "sr" / "notes.txt").write_text("kept")
    missing = tmp_path / "missing"
    with pytest.raises(ConfigValueError) as info:
        run(_cfg(f"checkpoint={missing}", f"lq_dir={missing}", f"output_dir={out}"))
    assert str(info.value) == (
        f"{out / 'sr'} already holds 1 SR image(s) of an earlier run; nothing was computed "
        "(overwrite=true replaces them; or give another output_dir=)"
    )
    assert sorted(p.name for p in (out / "sr").iterdir()) == ["notes.txt", "old.png"]
    with pytest.raises(ConfigValueError, match=r"^overwrite='yes': must be true or false$"):
        run(_cfg(f"checkpoint={missing}", f"lq_dir={missing}", f"output_dir={out}", "overwrite=yes"))
