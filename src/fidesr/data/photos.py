"""Demo images that exist on every fresh install: the colour photographs scikit-image ships in its wheel.

The demo (``experiment=demo``, :mod:`fidesr.data.demo`) trains on crops of nine colour photographs and
validates on 16 LQ/GT pairs cut from others (and two crops of a training photo, kept from the first demo),
so it never needs a download or ``../shared``. The tiny backbone warms its VAE up on the same photographs
(:mod:`fidesr.backbone.tiny`) and fidesr-app cuts its examples from them: this module imports only the
image reader (no data module, no Lightning), so that all three import it at the top.
"""

from __future__ import annotations

from pathlib import Path

import skimage
import torch
import torch.nn.functional as F

from fidesr.data.imageio import list_images, load_image, save_image

# Colour photographs inside skimage/data (no pooch download needed), for training.
TRAIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "color.png",
)
#: Validation crops: (photograph, ((fy, fx), ...)) with (fy, fx) the crop's top-left corner as a fraction
#: of the free range (0: top/left edge, 1: bottom/right edge). 16 crops, so that a paired comparison of
#: configurations has an interval over images: the first four are the original demo's (kept, so its numbers
#: stay comparable); the rest add held-out scenes and textures (brick, grass, gravel: where super-resolution
#: differs most), grayscale ones replicated to RGB by the loader.
VAL_CROPS: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("motorcycle_right.png", ((0.3, 0.3), (0.6, 0.6))),
    ("astronaut.png", ((0.3, 0.3), (0.6, 0.6))),
    ("motorcycle_right.png", ((0.2, 0.85), (0.85, 0.1))),
    ("camera.png", ((0.25, 0.45), (0.75, 0.8))),
    ("brick.png", ((0.2, 0.2), (0.7, 0.7))),
    ("grass.png", ((0.2, 0.6), (0.7, 0.2))),
    ("gravel.png", ((0.3, 0.7), (0.8, 0.3))),
    ("coins.png", ((0.5, 0.5),)),
    ("moon.png", ((0.5, 0.3),)),
)
#: Bump when the demo data changes: a cache written by an older version is rebuilt (validation part only).
DEMO_DATA_VERSION = "2"


def skimage_data_dir() -> Path:
    return Path(skimage.__file__).parent / "data"


def prepare_demo_data(root: str | Path, val_size: int = 128, scale: int = 4) -> Path:
    """Write the demo data under ``root`` once (idempotent); returns ``root``.

    Layout: ``train/`` HQ photos (copied as PNG), ``val/gt`` and ``val/lq`` with the 16 ``VAL_CROPS`` pairs
    of ``val_size`` px GT crops and their bicubic x``scale`` LQ (antialiased, rounded to 8 bits like a
    saved image). Names are ``<photo>_<y>_<x>``.
    """
    root = Path(root)
    done = root / ".complete"
    if done.is_file() and done.read_text().strip() == f"v{DEMO_DATA_VERSION}":
        return root
    src = skimage_data_dir()
    for name in TRAIN_PHOTOS:
        save_image(load_image(src / name), root / "train" / f"{Path(name).stem}.png")
    for sub in ("gt", "lq"):  # an older version's pairs must not linger beside the new ones
        for old in (root / "val" / sub).glob("*.png"):
            old.unlink()
    for name, corners in VAL_CROPS:
        img = load_image(src / name)
        _, h, w = img.shape
        for fy, fx in corners:
            y, x = int((h - val_size) * fy), int((w - val_size) * fx)
            gt = img[:, y : y + val_size, x : x + val_size]
            lq = F.interpolate(gt[None], scale_factor=1 / scale, mode="bicubic", antialias=True)[0]
            lq = (lq.clamp(0, 1) * 255).round() / 255
            stem = f"{Path(name).stem}_{y}_{x}"
            save_image(gt, root / "val" / "gt" / f"{stem}.png")
            save_image(lq, root / "val" / "lq" / f"{stem}.png")
    done.write_text(f"v{DEMO_DATA_VERSION}\n")
    return root


def demo_training_images(root: str | Path) -> list[torch.Tensor]:
    """All demo HQ photos as [3,H,W] tensors in [0,1] (for the tiny VAE warm-up)."""
    return [load_image(p) for p in list_images(Path(root) / "train")]
