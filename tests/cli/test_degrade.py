"""fidesr-degrade on a small folder the test creates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidesr.cli.degrade import image_seed, main


@pytest.fixture
def gt_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "gt"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (64, 48), "b.jpg": (50, 67), "c.bmp": (32, 32)}.items():
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(p).size for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("preset", ["bicubic", "osediff"])
def test_degrade_writes_pngs_and_reports_the_broken_file(
    gt_dir: Path, tmp_path: Path, preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lq"
    rc = main([str(gt_dir), str(out), "--preset", preset, "--seed", "3"])
    assert rc != 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err
    assert "3 written, 1 failed of 4" in captured.out
    # (width, height) = GT cropped to a multiple of 4, divided by 4; same stems, PNG.
    assert _sizes(out) == {"a.png": (12, 16), "b.png": (16, 12), "c.png": (8, 8)}


def test_degrade_is_deterministic_and_resize_back_keeps_the_cropped_size(
    gt_dir: Path, tmp_path: Path
) -> None:
    (gt_dir / "broken.png").unlink()
    args = [str(gt_dir), "--preset", "pisasr", "--seed", "5"]
    assert main([args[0], str(tmp_path / "r1"), *args[1:]]) == 0
    assert main([args[0], str(tmp_path / "r2"), *args[1:]]) == 0
    for name in ("a.png", "b.png", "c.png"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes()
    assert main([args[0], str(tmp_path / "back"), *args[1:], "--resize-back"]) == 0
    assert _sizes(tmp_path / "back") == {"a.png": (48, 64), "b.png": (64, 48), "c.png": (32, 32)}
    assert main([args[0], str(tmp_path / "x2"), *args[1:], "--scale", "2"]) == 0
    assert _sizes(tmp_path / "x2")["a.png"] == (24, 32)


def test_image_seed_depends_on_seed_and_name_only() -> None:
    assert image_seed(1, "a.png") == image_seed(1, "a.png")
    assert image_seed(1, "a.png") != image_seed(2, "a.png") != image_seed(1, "b.png")


def test_usage_errors_exit_2(gt_dir: Path, tmp_path: Path) -> None:
    assert main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    before = (gt_dir / "a.png").read_bytes()
    assert main([str(gt_dir), str(gt_dir)]) == 2  # would overwrite the PNG inputs
    assert (gt_dir / "a.png").read_bytes() == before


def test_existing_outputs_are_not_replaced_without_overwrite(
    gt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lq"
    out.mkdir()
    (out / "a.png").write_bytes(b"an earlier run's output")
    assert main([str(gt_dir), str(out), "--preset", "bicubic"]) == 2
    assert "1 output(s) already in" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == [
        "a.png"
    ]
    assert (out / "a.png").read_bytes() == b"an earlier run's output"
    assert main([str(gt_dir), str(out), "--preset", "bicubic", "--overwrite"]) == 1  # broken.png still fails
    assert (out / "a.png").read_bytes() != b"an earlier run's output"


def test_empty_input_and_a_file_as_output_are_errors(
    tmp_path: Path, gt_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "lq")]) == 2
    assert "no images in" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([str(gt_dir), str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "Traceback" not in err


def test_a_decompression_bomb_is_named_and_the_rest_written(
    gt_dir: Path, tmp_path: Path, png_bomb, capsys: pytest.CaptureFixture[str]
) -> None:
    png_bomb(gt_dir / "bomb.png")
    assert main([str(gt_dir), str(tmp_path / "lq"), "--preset", "bicubic"]) == 1
    captured = capsys.readouterr()
    assert "bomb.png" in captured.err and "pixels is over the limit" in captured.err
    assert "3 written, 2 failed of 5" in captured.out


def test_a_full_disk_is_one_line_naming_the_file(
    gt_dir: Path, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lq"
    out.mkdir()
    with full_disk(100):  # every LQ PNG is larger than 100 bytes
        rc = main([str(gt_dir), str(out), "--preset", "bicubic"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"fidesr-degrade: error: no space left writing {out / 'a.png'} (File too large)" in err
    assert list(out.iterdir()) == []  # no partial file, no temporary file


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--scale", "0"], "argument --scale: must be an integer >= 1, got 0"),
        (["--max-pixels", "0"], "argument --max-pixels: must be an integer >= 1, got 0"),
    ],
)
def test_bad_numbers_are_refused_by_argparse(
    gt_dir: Path, tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(gt_dir), str(tmp_path / "lq"), *option])
    assert stop.value.code == 2 and f"fidesr-degrade: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "lq").exists()
