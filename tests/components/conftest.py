"""Shared fixtures for the component tests: real RealSR images (skipped when the data set is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# Make the sibling helper module importable under any pytest import mode (prepend or importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from numpy_reference import load_png  # noqa: E402

REALSR = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "realsr"
# A few images keep the suite fast; they are fixed so failures reproduce.
REALSR_NAMES = ("Canon_001_LR4.png", "Nikon_010_LR4.png")


@pytest.fixture(scope="session")
def realsr_root() -> Path:
    if not (REALSR / "gt").is_dir():
        pytest.skip("../shared/datasets/realsr not present")
    return REALSR


def _stack(root: Path, sub: str) -> np.ndarray:
    names = [n for n in REALSR_NAMES if (root / sub / n).exists()]
    if not names:  # fall back to whatever is there
        names = sorted(p.name for p in (root / sub).glob("*.png"))[:2]
    if not names:
        pytest.skip(f"no PNG in {root / sub}")
    return np.stack([load_png(root / sub / n) for n in names])


@pytest.fixture(scope="session")
def realsr_gt(realsr_root: Path) -> np.ndarray:
    """GT images ``[N, 3, 512, 512]`` float64 in [0, 1]."""
    return _stack(realsr_root, "gt")


@pytest.fixture(scope="session")
def realsr_lq(realsr_root: Path) -> np.ndarray:
    """LQ images ``[N, 3, 128, 128]`` float64 in [0, 1] (same names as ``realsr_gt``)."""
    return _stack(realsr_root, "lq")


@pytest.fixture(scope="session")
def realsr_osediff(realsr_root: Path) -> np.ndarray:
    """OSEDiff SR outputs ``[N, 3, 512, 512]`` float64 in [0, 1] (same names)."""
    if not (realsr_root / "osediff").is_dir():
        pytest.skip("no osediff outputs in ../shared/datasets/realsr")
    return _stack(realsr_root, "osediff")
