"""Image I/O for evaluation: the exact reading convention of the protocol, folder pairing.

Reading follows pyiqa's ``imread2tensor`` (PIL, converted to RGB, ``to_tensor``), so metrics computed on
8-bit files here equal pyiqa's when it is handed the paths (what OSEDiff's ``test_metrics.py`` does): scores
are computed the way the published tables were. 16-bit files, which PIL's RGB conversion would clip to
white, go through ``fidesr.data.imageio.load_image`` instead (values / 65535, greyscale replicated), so a
16-bit file scores as the 8-bit file of the same picture does. Writing and listing are shared with ``imageio``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fidesr.data import imageio
from fidesr.data.imageio import IMAGE_EXTENSIONS, list_images
from fidesr.errors import ConfigValueError

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_images",
    "list_images",
    "match_pairs",
    "quantize",
    "read_for_metrics",
    "safe_stem",
    "save_image",
    "size_mismatches",
    "thumbnail",
    "to_uint8",
]


def read_for_metrics(
    path: str | os.PathLike, max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` float32 in ``[0,1]`` (8-bit values / 255, 16-bit / 65535).

    Raises:
        ImageLoadError: naming the file (unreadable, truncated, over ``max_pixels``).
    """
    try:
        with imageio.open_image(path, max_pixels) as img:
            if not imageio.is_16bit(path, img):
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
                return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    except (OSError, ValueError, SyntaxError) as err:
        raise imageio.ImageLoadError(f"cannot read image {path}: {err}") from err
    return imageio.load_image(path, max_pixels)[None]


def check_images(
    paths: Sequence[str | os.PathLike], max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS
) -> list[str]:
    """Decode every file once (without keeping it); the problems, one line per file naming it."""
    problems = []
    for path in paths:
        try:
            with imageio.open_image(path, max_pixels) as img:
                img.load()
        except imageio.ImageLoadError as err:
            problems.append(str(err))
        except (OSError, ValueError, SyntaxError) as err:
            problems.append(f"cannot read image {path}: {err}")
    return problems


def size_mismatches(pairs: Sequence[tuple[Path, Path | None]]) -> list[str]:
    """SR/GT pairs whose sizes differ (read from the headers), one line per pair naming both files and
    sizes; the files must be readable (:func:`check_images` first)."""

    def size(path: Path) -> tuple[int, int]:
        with imageio.open_image(path, None) as img:
            return img.size

    problems = []
    for sr, gt in pairs:
        if gt is not None and (a := size(sr)) != (b := size(gt)):
            problems.append(f"SR {sr} is {a[0]} x {a[1]} px but GT {gt} is {b[0]} x {b[1]} px")
    return problems


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` or ``[1,3,H,W]`` in ``[0,1]`` -> ``[H,W,3]`` uint8 (round half to even, as torch)."""
    return imageio.to_uint8(x[0] if x.dim() == 4 else x)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round ``[0,1]`` images to the 8-bit grid they will have once saved, same shape and dtype."""
    return x.clamp(0, 1).mul(255).round().div(255).to(x.dtype)


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save ``[3,H,W]``/``[1,3,H,W]`` in ``[0,1]`` as an 8-bit image (format from the suffix), atomically."""
    return imageio.save_image(x[0] if x.dim() == 4 else x, path)


def thumbnail(x: torch.Tensor, size: int = 128) -> Image.Image:
    """A PIL thumbnail (longest side ``size``) of a ``[3,H,W]`` image in ``[0,1]``."""
    img = Image.fromarray(to_uint8(x))
    img.thumbnail((size, size), Image.BICUBIC)
    return img


def safe_stem(name: str) -> str:
    """File-system-safe stem of an image name (``"a/b.png"`` -> ``"a_b"``)."""
    stem = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
    return stem.replace("/", "_").replace("\\", "_")


def match_pairs(sr: Sequence[Path], gt: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair SR and GT files by file stem (``x.png`` matches ``x.jpg``), in SR order.

    Raises:
        ValueError: listing the names present on one side only (or duplicated stems), so a wrong folder
            or a renamed output is caught before any metric runs.
    """

    def by_stem(files: Sequence[Path], side: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in files:
            if f.stem in out:
                raise ConfigValueError(
                    f"{side}: two files with the stem {f.stem!r}: {out[f.stem].name}, {f.name}"
                )
            out[f.stem] = f
        return out

    s, g = by_stem(sr, "sr_dir"), by_stem(gt, "gt_dir")
    only_sr, only_gt = sorted(set(s) - set(g)), sorted(set(g) - set(s))
    if only_sr or only_gt:

        def show(names: list[str]) -> str:
            return ", ".join(names[:20]) + (f" ... (+{len(names) - 20})" if len(names) > 20 else "") or "-"

        raise ConfigValueError(
            f"SR and GT folders do not match by file name: {len(only_sr)} SR image(s) without GT "
            f"[{show(only_sr)}]; {len(only_gt)} GT image(s) without SR [{show(only_gt)}]"
        )
    return [(s[k], g[k]) for k in s]
