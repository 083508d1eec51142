"""Paths and markers shared by the metric tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REALSR = SHARED / "datasets" / "realsr"
NIQE_NPZ = SHARED / "weights" / "niqe_pris_params.npz"

needs_realsr = pytest.mark.skipif(not REALSR.is_dir(), reason=f"{REALSR} absent (shared evaluation data)")
needs_niqe_npz = pytest.mark.skipif(not NIQE_NPZ.is_file(), reason=f"{NIQE_NPZ} absent (shared weights)")
