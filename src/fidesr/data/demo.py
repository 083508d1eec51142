"""The demo's data (``experiment=demo``, ``conf/data/demo.yaml``): an :class:`SRDataModule` over the
photographs scikit-image ships (:mod:`fidesr.data.photos`, whose names are importable from here too)."""

from __future__ import annotations

from pathlib import Path

from fidesr.data.datamodule import SRDataModule
from fidesr.data.photos import (
    DEMO_DATA_VERSION,
    TRAIN_PHOTOS,
    VAL_CROPS,
    demo_training_images,
    prepare_demo_data,
    skimage_data_dir,
)

__all__ = [
    "DEMO_DATA_VERSION",
    "TRAIN_PHOTOS",
    "VAL_CROPS",
    "demo_datamodule",
    "demo_training_images",
    "prepare_demo_data",
    "skimage_data_dir",
]


def demo_datamodule(root: str | Path, **kwargs) -> SRDataModule:
    """The demo's SRDataModule (writes the demo data under ``root`` first if needed)."""
    root = prepare_demo_data(root)
    return SRDataModule(
        train_sources=[{"path": str(root / "train"), "name": "skimage"}],
        val_sets={"demo": {"lq": str(root / "val" / "lq"), "gt": str(root / "val" / "gt")}},
        **kwargs,
    )
