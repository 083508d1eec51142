"""Robust image reading and atomic writing.

Every image that enters fidesr goes through :func:`load_image`, so the awkward cases are handled in one
place. Conversions (documented in the README, pinned by tests/data/test_imageio.py):

- EXIF orientation is applied (a phone photo comes out the way it is displayed).
- Grayscale (``L``, ``I;16``, ``I``, ``F``) is replicated to three channels.
- Palette (``P``) and ``LA``/``RGBA``/``PA`` images are converted to RGB; transparency is composited over
  white (what image viewers show) instead of dropping the alpha channel to undefined colours.
- 16-bit images keep their precision: values are divided by 65535, not truncated to 8 bits.
- CMYK JPEGs (including Adobe's inverted ones, which PIL handles) are converted to RGB.

Anything PIL cannot decode (corrupt, truncated, not an image) raises :class:`ImageLoadError` naming the file,
and so does an image with more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, PIL's own
decompression-bomb limit): its size is read from the header, before any pixel is decoded, so a 100000 x
100000 PNG of a few kilobytes costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fidesr.errors import FidesrError
from fidesr.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Truncated files must fail loudly instead of being decoded with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False
#: The largest image (in pixels) read by default: PIL's decompression-bomb threshold (about 89.5 MP, e.g.
#: 9459 x 9459). The command-line tools take ``--max-pixels``.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageLoadError(FidesrError, RuntimeError):
    """An image file could not be decoded, or is larger than allowed. The message names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Sorted image files (by extension) under ``folder``; hidden files are ignored."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def _to_float_rgb(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> float32 [H, W, 3] in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
    elif mode == "I":
        # 32-bit integer PNGs are 16-bit greyscale in practice (PIL opens 16-bit PNGs as "I").
        arr = np.asarray(img, dtype=np.int64).astype(np.float32)
        arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / 255.0 if arr.max(initial=0) > 1.0 else arr
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        arr = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def is_16bit(path: str | os.PathLike, img: Image.Image) -> bool:
    """Whether an opened image has 16-bit samples. PIL opens 16-bit greyscale as ``I;16``/``I`` but 16-bit
    RGB(A) PNG/TIFF as 8-bit ``RGB(A)``, so for those the file's own header is read (PNG IHDR bit depth,
    TIFF BitsPerSample)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return True
    if img.format == "PNG":
        with open(path, "rb") as fh:
            header = fh.read(25)
        return len(header) == 25 and header[24] == 16
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample
        return bits is not None and max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _read_16bit_rgb(path: Path) -> np.ndarray | None:
    """PIL reads 48/64-bit RGB(A) PNG/TIFF as 8-bit; OpenCV keeps 16 bits. Returns None if not 16-bit RGB."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv comes with pyiqa
        return None
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        return None
    if arr.shape[2] == 4:
        rgb = arr[..., 2::-1].astype(np.float32) / 65535.0
        alpha = arr[..., 3:4].astype(np.float32) / 65535.0
        return rgb * alpha + (1.0 - alpha)
    return arr[..., ::-1].astype(np.float32) / 65535.0


@contextlib.contextmanager
def open_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with fidesr's size limit checked on the header, before decoding.

    ``max_pixels=None`` lifts fidesr's limit (PIL's own hard limit, twice its warning threshold, still
    applies unless ``PIL.Image.MAX_IMAGE_PIXELS`` is changed). Raises :class:`ImageLoadError` naming the
    file for a missing, unreadable or oversized image.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL's DecompressionBombWarning: the limit below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice PIL's threshold: PIL refuses in open()
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found[1]):,} pixels" if found else "the image"
        raise ImageLoadError(
            _too_large(path, size, max_pixels if max_pixels is not None else 2 * DEFAULT_MAX_PIXELS)
        ) from err
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err
    with img:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(_too_large(path, f"{w} x {h} = {w * h:,} pixels", max_pixels))
        yield img


def _too_large(path: Path, size: str, limit: int) -> str:
    return (
        f"cannot read image {path}: {size} is over the limit of {limit:,} (a decompression bomb, or a very "
        "large image: raise the limit with --max-pixels, or max_pixels= in fidesr-eval)"
    )


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image file as RGB float.

    Args:
        path: the image file.
        max_pixels: refuse larger images (checked on the header, before decoding); None: no fidesr limit.

    Returns:
        Tensor [3, H, W], float32 in [0, 1], orientation as displayed (EXIF applied).

    Raises:
        ImageLoadError: the file is missing, not an image, corrupt, truncated or over ``max_pixels``
            (message names it).
    """
    path = Path(path)
    try:
        with open_image(path, max_pixels) as img:
            img.load()
            mode, exif_img = img.mode, ImageOps.exif_transpose(img)
            arr = None
            if mode in ("RGB", "RGBA") and is_16bit(path, img):
                arr = _read_16bit_rgb(path)
                if arr is not None and exif_img.size != img.size:  # rare: rotated 16-bit TIFF
                    arr = None
            if arr is None:
                arr = _to_float_rgb(exif_img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> uint8 [H, W, 3], rounded (not truncated)."""
    return (img.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def save_image(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write [3, H, W] in [0, 1] as an 8-bit image (format from the suffix), atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_write(path) as fh:
        Image.fromarray(to_uint8(img)).save(fh, format=fmt)
    return path
