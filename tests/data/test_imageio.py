"""Awkward and bad image files: each is converted correctly or fails with the file's name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fidesr.data.imageio import ImageLoadError, list_images, load_image, save_image


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (3, 12, 20) and x.dtype == torch.float32
    assert torch.equal((x * 255).round().byte().permute(1, 2, 0), torch.from_numpy(rgb))


def test_grayscale_replicated(tmp_path, rgb):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (3, 12, 20) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0] * 255, torch.from_numpy(rgb[..., 0]).float())


def test_palette_converted_to_its_colours(tmp_path, rgb):
    img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    expected = torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert torch.equal(load_image(tmp_path / "p.png"), expected)


def test_rgba_composited_over_white(tmp_path, rgb):
    alpha = np.zeros((12, 20), np.uint8)
    alpha[:, 10:] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert torch.all(x[:, :, :10] == 1.0)  # fully transparent -> white
    assert torch.allclose(x[:, :, 10:] * 255, torch.from_numpy(rgb[:, 10:]).permute(2, 0, 1).float())


def test_16bit_grayscale_keeps_precision(tmp_path):
    arr = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 271).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    torch.testing.assert_close(x[0], torch.from_numpy(arr.astype(np.float32) / 65535), rtol=0, atol=1e-7)


def test_16bit_rgb_keeps_precision(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), arr[..., ::-1])  # OpenCV writes BGR
    x = load_image(tmp_path / "c16.png")
    torch.testing.assert_close(
        x.permute(1, 2, 0), torch.from_numpy(arr.astype(np.float32) / 65535), rtol=0, atol=1e-7
    )


def test_cmyk_jpeg_converted(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red
    x = load_image(tmp_path / "c.jpg")
    assert x.shape == (3, 8, 16)
    assert x[0].mean() > 0.9 and x[1].mean() < 0.1 and x[2].mean() < 0.1


def test_exif_rotation_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    x = load_image(tmp_path / "r.jpg")
    assert x.shape == (3, 20, 12)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "not_an_image", "missing"])
def test_bad_files_raise_naming_the_file(tmp_path, rgb, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif kind == "truncated":
        Image.fromarray(rgb).save(path)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "not_an_image":
        path.write_text("hello, I am text")
    with pytest.raises(ImageLoadError, match=kind):
        load_image(path)


def test_save_is_atomic_and_lists_images(tmp_path, rgb, monkeypatch):
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    path = save_image(x, tmp_path / "out" / "a.png")
    assert torch.equal(load_image(path), x)

    # A failure while encoding leaves neither a partial file nor a temporary one behind.
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_image(x, tmp_path / "out" / "b.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    (tmp_path / "out" / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path / "out")] == ["a.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")
