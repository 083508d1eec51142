"""What the metric and weight tests share (imported by name: tests/ is not a package): the shared data's
paths and markers, and the fixtures their conftest.py files import (an isolated weights directory per test,
NIQE's parameters adopted into it)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REALSR = SHARED / "datasets" / "realsr"
NIQE_NPZ = SHARED / "weights" / "niqe_pris_params.npz"

needs_realsr = pytest.mark.skipif(not REALSR.is_dir(), reason=f"{REALSR} absent (shared evaluation data)")
needs_niqe_npz = pytest.mark.skipif(not NIQE_NPZ.is_file(), reason=f"{NIQE_NPZ} absent (shared weights)")


@pytest.fixture(autouse=True)
def weights_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights directory as $FIDESR_WEIGHTS_DIR (metric builds read it; nothing process-wide
    changes, so nothing needs restoring)."""
    wd = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("FIDESR_WEIGHTS_DIR", str(wd))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return wd


@pytest.fixture
def niqe_weights(weights_dir: Path) -> Path:
    """The test's weights directory with NIQE's parameters adopted from the shared .npz."""
    if not NIQE_NPZ.is_file():
        pytest.skip(f"{NIQE_NPZ} absent")
    from fidesr import weights as W

    W.adopt([NIQE_NPZ], weights_dir, log=lambda _: None)
    return weights_dir
