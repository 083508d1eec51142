"""Demo images that exist on every fresh install: the colour photographs scikit-image ships in its wheel.

The demo (``experiment=demo``) trains on crops of most of them and validates on LQ/GT pairs made from
held-out ones, so it never needs a download or ``../shared``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fidesr.data.imageio import list_images, load_image, save_image

# Colour photographs inside skimage/data (no pooch download needed). The last two are held out for
# validation.
TRAIN_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png")  # fmt: skip
VAL_PHOTOS = ("motorcycle_right.png", "astronaut.png")


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def prepare_demo_data(root: str | Path, val_size: int = 128, scale: int = 4, num_val: int = 4) -> Path:
    """Write the demo data under ``root`` once (idempotent); returns ``root``.

    Layout: ``train/`` HQ photos (copied as PNG), ``val/gt`` and ``val/lq`` with ``num_val`` pairs of
    ``val_size`` px GT crops from the held-out photos and their bicubic x``scale`` LQ (antialiased, rounded
    to 8 bits like a saved image).
    """
    root = Path(root)
    done = root / ".complete"
    if done.is_file():
        return root
    src = skimage_data_dir()
    for name in TRAIN_PHOTOS:
        save_image(load_image(src / name), root / "train" / f"{Path(name).stem}.png")
    crops = []
    for name in VAL_PHOTOS:
        img = load_image(src / name)
        _, h, w = img.shape
        # Deterministic, spread-out crops: corners of the central region, avoiding flat borders.
        for fy, fx in ((0.3, 0.3), (0.6, 0.6)):
            y, x = int((h - val_size) * fy), int((w - val_size) * fx)
            crops.append((f"{Path(name).stem}_{y}_{x}", img[:, y : y + val_size, x : x + val_size]))
    for stem, gt in crops[:num_val]:
        lq = F.interpolate(gt[None], scale_factor=1 / scale, mode="bicubic", antialias=True)[0]
        lq = (lq.clamp(0, 1) * 255).round() / 255
        save_image(gt, root / "val" / "gt" / f"{stem}.png")
        save_image(lq, root / "val" / "lq" / f"{stem}.png")
    done.write_text("ok\n")
    return root


def demo_training_images(root: str | Path) -> list[torch.Tensor]:
    """All demo HQ photos as [3,H,W] tensors in [0,1] (for the tiny VAE warm-up)."""
    return [load_image(p) for p in list_images(Path(root) / "train")]


def demo_datamodule(root: str | Path, **kwargs):
    """The demo's SRDataModule (writes the demo data under ``root`` first if needed)."""
    from fidesr.data.datamodule import SRDataModule

    root = prepare_demo_data(root)
    return SRDataModule(
        train_sources=[{"path": str(root / "train"), "name": "skimage"}],
        val_sets={"demo": {"lq": str(root / "val" / "lq"), "gt": str(root / "val" / "gt")}},
        **kwargs,
    )
