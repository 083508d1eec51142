"""``fidesr-benchmark`` (``fidesr.benchmark``): the tiny trained checkpoint and its export on a small folder
set give one row each with the same numbers; a second call reuses the images; an interrupted run resumes;
offline, the pre-flight lists what is missing before any work."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fidesr.benchmark import write_tables
from fidesr.cli.benchmark import main
from fidesr.data.benchmarks import PairedSet


def _folder_set(root: Path, n: int = 2) -> Path:
    """StableSR's folder names: test_LR (16 px) and test_HR (64 px), paired by stem."""
    rng = np.random.default_rng(0)
    for sub, side in (("test_LR", 16), ("test_HR", 64)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / sub / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(trained_model: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fidesr.modelio import TrainedWeights

    folder = tmp_path_factory.mktemp("bench_export") / "export"
    TrainedWeights.load(trained_model["ckpt"]).save_pretrained(folder)
    return folder


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # three benchmark calls, two models each (about 3 s on 2 cores)
def test_checkpoint_and_export_give_one_row_each_and_a_rerun_reuses_the_images(
    trained_model: dict, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder_set(tmp_path / "tiny_set")
    out = tmp_path / "out"
    argv = ["--models", str(trained_model["ckpt"]), str(exported), "--sets", str(folder)]
    argv += ["--metrics", "psnr", "ssim", "-o", str(out), "--device", "cpu", "--no-progress"]
    t0 = time.perf_counter()
    assert main(argv) == 0
    first = time.perf_counter() - t0
    rows = _table(out)
    assert [(r["model"], r["set"], r["n_images"]) for r in rows] == [
        ("last", "tiny_set", "2"),
        ("export", "tiny_set", "2"),
    ]
    assert list(rows[0]) == ["model", "set", "n_images", "psnr", "ssim", "seconds_per_image", "device"]
    assert rows[0]["psnr"] == rows[1]["psnr"] and rows[0]["ssim"] == rows[1]["ssim"]
    assert float(rows[0]["seconds_per_image"]) > 0 and rows[0]["device"] == "cpu"
    per_image = (out / "last" / "tiny_set" / "per_image.csv").read_text().splitlines()
    assert per_image[0] == "name,psnr,ssim" and len(per_image) == 3
    assert "| last | tiny_set | 2 |" in (out / "table.md").read_text()
    srs = sorted((out / "export" / "tiny_set" / "sr").iterdir())
    assert [p.name for p in srs] == ["im0.png", "im1.png"]
    with Image.open(srs[0]) as im:
        assert im.size == (64, 64)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("sr/*.png")}
    capsys.readouterr()

    t0 = time.perf_counter()
    assert main(argv) == 0
    second = time.perf_counter() - t0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("sr/*.png")} == stamps  # nothing written again
    assert _table(out) == rows
    assert second <= first / 2, (first, second)  # no model loaded, nothing upscaled

    # An interrupted run: one image written but not yet scored, one not written at all.
    (out / "last" / "tiny_set" / "sr" / "im1.png").unlink()
    scores = out / "export" / "tiny_set" / "per_image.csv"
    scores.write_text("\n".join(scores.read_text().splitlines()[:2]) + "\n")
    assert main(argv) == 0
    assert (out / "last" / "tiny_set" / "sr" / "im1.png").is_file()
    assert (out / "export" / "tiny_set" / "sr" / "im1.png").stat().st_mtime_ns == stamps[
        out / "export" / "tiny_set" / "sr" / "im1.png"
    ]  # scored from the file already written
    assert _table(out)[0]["psnr"] == rows[0]["psnr"] and _table(out)[1]["psnr"] == rows[1]["psnr"]


def test_offline_the_preflight_lists_what_is_missing_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty Hugging Face cache
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FIDESR_DATA_DIR", str(tmp_path / "data"))
    argv = [
        "--models",
        "fidesr",
        "--sets",
        "realsr",
        "-o",
        str(tmp_path / "out"),
        "--weights-dir",
        str(tmp_path / "w"),
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "jmjin2/FiDeSR" in err and "fidesr.pkl" in err
    assert "StableSR test sets" in err and "Iceclear/StableSR-TestSets" in err
    assert "fidesr-data download realsr" in err and "download --metrics lpips dists fid" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_tables_put_published_rows_in_their_own_block_and_draw_the_plane(tmp_path: Path) -> None:
    rows = [
        {
            "model": m,
            "set": "realsr",
            "n_images": 100,
            "psnr": p,
            "lpips": lp,
            "seconds_per_image": 0.1,
            "device": "cuda",
        }
        for m, p, lp in (("fidesr", 26.0, 0.26), ("osediff", 25.2, 0.29))
    ]
    realsr = PairedSet("realsr", tmp_path / "lq", tmp_path / "gt")
    files = write_tables(rows, ["psnr", "lpips"], tmp_path, [realsr])
    md = files["table_md"].read_text()
    ours, published = md.split("## Published: RealSR")
    assert "| fidesr | realsr | 100 | 26.0000 | 0.2600 | 0.1000 | cuda |" in ours and "paper" not in ours
    assert "| FiDeSR (paper) | 26.02 | 0.2626 |" in published and "osediff_metrics.log" in published
    with Image.open(files["plot"]) as im:
        assert im.size[0] > 200


def test_models_resolve_to_what_the_loader_reads(trained_model: dict, exported: Path) -> None:
    """Local files and folders pass through; PiSA-SR's file, on Google Drive only, is named with its page."""
    from fidesr.errors import FidesrError
    from fidesr.modelio import locate_model

    assert locate_model(str(trained_model["ckpt"])) == str(trained_model["ckpt"])
    assert locate_model(str(exported)) == str(exported)
    with pytest.raises(FidesrError, match="Google Drive"):
        locate_model("pisasr")
    with pytest.raises(FidesrError, match="no-such-model"):
        locate_model("./no-such-model.ckpt")
