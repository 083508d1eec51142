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


def test_the_job_log_file_on_a_full_disk_is_one_warning(
    tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra's job log of fidesr-train and fidesr-eval is a JobLogFile: a full disk is one warning naming it,
    not logging's traceback for every record."""
    import logging

    from hydra import compose, initialize_config_module

    from fidesr.loggers import JobLogFile

    for name in ("train", "eval"):
        with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
            cfg = compose(name, return_hydra_config=True)
        assert cfg.hydra.job_logging.handlers.file["class"] == "fidesr.loggers.JobLogFile", name
    handler = JobLogFile(tmp_path / "train.log")
    record = logging.LogRecord("fidesr.train", logging.INFO, __file__, 1, "x" * 200, None, None)
    with full_disk(100):
        for _ in range(3):
            handler.emit(record)
    handler.close()
    err = capsys.readouterr().err
    assert err == (
        f"warning: no space left writing {tmp_path / 'train.log'} (File too large); the log file stops here\n"
    )
