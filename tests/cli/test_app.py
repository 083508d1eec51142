"""fidesr-app without a browser: one request (strengths, colour fix, PNG), bad uploads, examples, the CLI.

The model is the conftest's trained tiny model (LoRA, LRRB, LFIM) loaded from its checkpoint; the browser test
(tests/cli/test_app_browser.py) serves a checkpoint from a real training run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="fidesr-app needs the extra fidesr[app] (make install installs it)")

from fidesr.app import AppInputError, InputLimits, build_app, read_upload, upscale_request, write_examples  # noqa: E402
from fidesr.cli.app import main  # noqa: E402
from fidesr.pipeline import FiDeSRPipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipe(trained_model: dict) -> FiDeSRPipeline:
    """The conftest's trained tiny model, loaded from its checkpoint as fidesr-app loads it (min_lq_size 32:
    a 32 px input is not enlarged first, which keeps the test fast)."""
    return FiDeSRPipeline.from_pretrained(trained_model["ckpt"], device="cpu")


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
    plain = FiDeSRPipeline(pipe.backbone, pipe.lrrb, None, min_lq_size=32)
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


def test_bad_uploads_give_a_clear_message(tmp_path: Path, png_bomb) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_picture(20, 24)).save(good)
    assert read_upload(good).shape == (3, 20, 24)
    # Every message names the file as uploaded, not by the server's temporary path.
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with pytest.raises(
        AppInputError, match=r"^cannot read image notes.png: cannot identify image file 'notes.png'$"
    ):
        read_upload(tmp_path / "notes.png")
    with pytest.raises(
        AppInputError, match=r"^cannot read image bomb.png: 10,000,000,000 pixels is over the limit"
    ):
        read_upload(png_bomb(tmp_path / "bomb.png"))  # 100000 x 100000 in the header, a few hundred bytes
    with pytest.raises(
        AppInputError,
        match=r"^cannot read image big.png: 2000 x 2000 = 4,000,000 pixels is over the limit of 1,048,576",
    ):
        read_upload(png_bomb(tmp_path / "big.png", side=2000))  # the app's own limit, checked before decoding
    Image.fromarray(_picture(8, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(
        AppInputError, match=r"^tiny.png is 40 x 8 px, too small: the app needs at least 16 px"
    ):
        read_upload(tmp_path / "tiny.png")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(AppInputError, match=r"^cannot read image cut.png"):
        read_upload(tmp_path / "cut.png")
    # Exactly at the limit is accepted, one pixel over is not.
    assert read_upload(good, InputLimits(max_pixels=480)).shape == (3, 20, 24)
    with pytest.raises(AppInputError, match="24 x 20 = 480 pixels is over the limit of 479"):
        read_upload(good, InputLimits(max_pixels=479))


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
        main(["--model", "fidesr", "--checkpoint", "x.ckpt", "--port", "0"])  # two models given
    assert "give one of --model (or its alias --checkpoint) or --official" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fidesr-app: error: model not found:") and "missing.ckpt" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_upload_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "photo.png"
    Image.fromarray(_picture(20, 24)).save(good)
    size = good.stat().st_size
    assert read_upload(good, InputLimits(max_bytes=size)).shape == (3, 20, 24)
    with pytest.raises(
        AppInputError, match=rf"^photo.png is {size:,} bytes, over the upload limit of {size - 1:,} bytes\.$"
    ):
        read_upload(good, InputLimits(max_bytes=size - 1))


def test_a_request_over_the_time_limit_is_stopped_and_the_next_runs(
    pipe: FiDeSRPipeline, tmp_path: Path
) -> None:
    from fidesr.app import RequestTimeoutError

    img = _picture()
    base = upscale_request(pipe, img, 0.2, 0.2, "adain", tmp_path, name="pic")
    with pytest.raises(
        RequestTimeoutError, match=r"^stopped after 1e-09 s, the app's time limit per request$"
    ):
        upscale_request(pipe, img, 0.2, 0.2, "adain", tmp_path, name="slow", seconds=1e-9)
    assert not (tmp_path / "slow_x4_lf0.20_hf0.20_adain.png").exists()
    # The hooks are gone and nothing was left half-set: the next request (with a generous limit) is the same.
    again = upscale_request(pipe, img, 0.2, 0.2, "adain", tmp_path, name="pic", seconds=60)
    assert np.array_equal(again.sr, base.sr)
    assert all(not m._forward_pre_hooks for m in pipe.backbone.modules())


def test_the_server_refuses_an_upload_over_the_limit(pipe: FiDeSRPipeline, tmp_path: Path) -> None:
    """Gradio's own server, as fidesr-app launches it: a file over max_bytes is answered 413, never stored."""
    import socket
    import urllib.error
    import urllib.request

    from fidesr.app import launch_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_app(pipe, tmp_path / "out")
    url = launch_app(demo, tmp_path, port=port, block=False, limits=InputLimits(max_bytes=1000))
    try:
        boundary = "fidesrboundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + b"\0" * 5000
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            url.rstrip("/") + "/gradio_api/upload",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert info.value.code == 413
    finally:
        demo.close()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-pixels", "0"], "argument --max-pixels: must be an integer >= 1, got 0"),
        (["--max-upload-mb", "0"], "argument --max-upload-mb: must be a finite number >= 0.001, got 0"),
        (["--time-limit", "nan"], "argument --time-limit: must be a finite number >= 0, got nan"),
        (["--queue-size", "0"], "argument --queue-size: must be an integer >= 1, got 0"),
        (["--tile", "-5"], "argument --tile: must be an integer >= 0, got -5"),
        (["--tile", "16"], "--tile-overlap 32 must be smaller than --tile 16 (or --tile 0: no tiling)"),
    ],
)
def test_bad_numbers_are_refused_before_the_model_loads(
    tmp_path: Path, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(tmp_path / "missing.ckpt"), *option])
    assert stop.value.code == 2 and f"fidesr-app: error: {message}\n" in capsys.readouterr().err
