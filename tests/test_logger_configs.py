"""Logger choices (``conf/logger``): the CSV log is written whatever the logger, so ``fidesr-report`` works
after any run; TensorBoard gets the scalars and the validation grids."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fidesr.metrics.tables import read_csv

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "logger", sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml") if p.stem != "none")
)
def test_every_logger_brings_the_csv_log(compose, logger: str) -> None:
    cfg = compose(["experiment=demo", f"logger={logger}"])
    assert cfg.logger.csv._target_ == "lightning.pytorch.loggers.CSVLogger"
    assert logger in cfg.logger


@pytest.mark.slow
def test_tensorboard_run_has_scalars_grids_and_the_csv(
    fast_train_overrides, cache_dir: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    env = {**os.environ, "FIDESR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(BIN / "fidesr-train"),
            *fast_train_overrides,
            "logger=tensorboard",
            "trainer.log_every_n_steps=1",
            "validate_before_fit=false",
            f"paths.output_dir={out}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_csv(out / "csv" / "metrics.csv")
    assert any(isinstance(r.get("train/loss/total"), float) for r in log)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert "val/demo/psnr" in scalars and "train/loss/total" in scalars
    assert "val/demo/grid" in images
    assert set(scalars) >= {k for k in log[-1] if k.startswith("val/")}  # the same scalars as the CSV
