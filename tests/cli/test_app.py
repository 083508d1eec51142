"""fidesr-app without a browser: one request (strengths, colour fix, PNG), bad uploads, examples, the CLI.

The model is the tiny backbone with LRRB and LFIM, finished for inference in-process; the browser test
(tests/cli/test_app_browser.py) serves a checkpoint from a real training run.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="fidesr-app needs the extra fidesr[app] (make install installs it)")

from fidesr.app import AppInputError, InputLimits, build_app, read_upload, upscale_request, write_examples  # noqa: E402
from fidesr.cli.app import main  # noqa: E402
from fidesr.components.lfim import LatentFrequencyInjection  # noqa: E402
from fidesr.components.lrrb import LatentResidualRefinementBlock  # noqa: E402
from fidesr.pipeline import FiDeSRPipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_backbone_folder: Path) -> FiDeSRPipeline:
    from fidesr.backbone.sd import StableDiffusionBackbone

    torch.manual_seed(0)
    backbone = StableDiffusionBackbone.from_pretrained(tiny_backbone_folder, local_files_only=True)
    # min_lq_size 16: a 32 px input is not enlarged first (fast), as the demo model does with 32 px crops.
    return FiDeSRPipeline.for_inference(backbone, LatentResidualRefinementBlock(), LatentFrequencyInjection(),
                                        device="cpu", min_lq_size=16)  # fmt: skip


def _picture(h: int = 32, w: int = 32) -> np.ndarray:
    """[h, w, 3] uint8 with flat areas and edges (LFIM's gates need both)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [128 + 100 * np.sin(x / 3), 128 + 100 * np.cos(y / 4), 255.0 * ((x // 8 + y // 8) % 2)], 2
    ).astype(np.uint8)


def test_strengths_and_colour_fix_change_the_result(pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    img = _picture()
    base = upscale_request(pipe, img, 0.2, 0.2, "adain", tmp_path, name="pic")
    assert base.sr.shape == base.bicubic.shape == (128, 128, 3) and base.sr.dtype == np.uint8
    assert base.seconds > 0 and base.png == tmp_path / "pic_x4_lf0.20_hf0.20_adain.png"
    assert np.array_equal(
        np.asarray(Image.open(base.png)), base.sr
    )  # the download is the full-resolution result
    # The bicubic baseline is the pipeline's own upsampling of the same input.
    lq = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    assert (
        np.abs(
            base.bicubic.astype(int) - np.asarray(pipe.upsample(lq)[0][0].permute(1, 2, 0) * 255).round()
        ).max()
        <= 1
    )
    again = upscale_request(pipe, img, 0.2, 0.2, "adain", tmp_path, name="pic")
    assert np.array_equal(again.sr, base.sr)  # fixed seed: only the settings change the result
    for lf, hf, fix in ((0.2, 0.9, "adain"), (0.9, 0.2, "adain"), (0.0, 0.0, "adain"), (0.2, 0.2, "none")):
        other = upscale_request(pipe, img, lf, hf, fix, tmp_path, name="pic")
        diff = np.abs(other.sr.astype(int) - base.sr.astype(int)).mean()
        assert diff > 0.05, (lf, hf, fix, diff)
        assert other.png.name == f"pic_x4_lf{lf:.2f}_hf{hf:.2f}_{fix}.png"
    # A float tensor input (what read_upload returns) gives the same result as the uint8 array.
    as_tensor = upscale_request(pipe, lq[0], 0.2, 0.2, "adain", tmp_path, name="pic")
    assert np.array_equal(as_tensor.sr, base.sr)


def test_invalid_settings_and_a_model_without_lfim(pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    with pytest.raises(AppInputError, match="colour fix must be one of adain, wavelet, none"):
        upscale_request(pipe, _picture(), 0.2, 0.2, "sepia", tmp_path)
    with pytest.raises(AppInputError, match="high-frequency strength must be a number >= 0"):
        upscale_request(pipe, _picture(), 0.2, -1.0, "adain", tmp_path)
    # A model without LFIM: its strengths cannot be set, the page's sliders are off, the rest works.
    plain = FiDeSRPipeline(pipe.backbone, pipe.lrrb, None, min_lq_size=16)
    with pytest.raises(AppInputError, match="this model has no LFIM"):
        upscale_request(plain, _picture(), 0.2, 0.2, "adain", tmp_path)
    assert (
        upscale_request(plain, _picture(), None, None, "adain", tmp_path).png.name
        == "image_x4_nolfim_adain.png"
    )
    sliders = [
        b
        for b in build_app(plain, tmp_path).blocks.values()
        if getattr(b, "elem_id", "") in ("fidesr-lf", "fidesr-hf")
    ]
    assert len(sliders) == 2 and not any(s.interactive for s in sliders)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height px and holds no pixels: a decompression bomb costs nothing to make."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_bad_uploads_give_a_clear_message(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_picture(20, 24)).save(good)
    assert read_upload(good).shape == (3, 20, 24)
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with pytest.raises(AppInputError, match=r"^notes.png is not an image file that can be read"):
        read_upload(tmp_path / "notes.png")
    with pytest.raises(AppInputError, match=r"^bomb.png is far too large to process"):
        read_upload(_png_header_only(tmp_path / "bomb.png", 40_000, 40_000))  # PIL's own bomb limit
    with pytest.raises(
        AppInputError, match=r"^big.png is 3000 x 2000 px \(6.0 MP\); this app takes inputs up to 1.0 MP"
    ):
        read_upload(
            _png_header_only(tmp_path / "big.png", 3000, 2000)
        )  # the app's limit, checked before decoding
    Image.fromarray(_picture(8, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(
        AppInputError, match=r"^tiny.png is 40 x 8 px, too small: the app needs at least 16 px"
    ):
        read_upload(tmp_path / "tiny.png")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(AppInputError, match=r"^cut.png is corrupt or truncated"):
        read_upload(tmp_path / "cut.png")
    assert read_upload(good, InputLimits(min_side=16, max_pixels=480)).shape == (
        3,
        20,
        24,
    )  # exactly at the limit


def test_examples_and_page_build_offline(pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    examples = write_examples(tmp_path / "examples")
    assert [p.name for p in examples] == ["motorcycle_right_lq.png", "astronaut_lq.png", "coffee_lq.png"]
    assert [read_upload(p).shape for p in examples] == [(3, 120, 120), (3, 128, 128), (3, 100, 100)]
    demo = build_app(pipe, tmp_path / "out", examples=examples)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"fidesr-upload", "fidesr-lf", "fidesr-hf", "fidesr-color", "fidesr-run", "fidesr-compare"} <= ids
    assert demo.analytics_enabled is False


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--port", "0"])  # no model given
    assert "give exactly one of --checkpoint or --official" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert (
        "fidesr-app: cannot load the model from" in err
        and "missing.safetensors" in err
        and "Traceback" not in err
    )
