"""fidesr-train's weights step: the same directory as fidesr-weights, files fetched before any model is
built, and offline one error naming every missing file (metrics and LPIPS-VGG) and the fetch command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fidesr import weights as W
from fidesr.cli.train import train


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every variable the weights step may set is restored after the test (train sets them for its ranks)."""
    for name in ("FIDESR_WEIGHTS_DIR", "TORCH_HOME", "XDG_CACHE_HOME", W.MIRROR_ENV, "FIDESR_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"TORCH_HOME": "/opt/th"},
        {"XDG_CACHE_HOME": "/x"},
        {"FIDESR_WEIGHTS_DIR": "/data/w", "TORCH_HOME": "/opt/th"},
    ],
)
def test_train_config_resolves_the_weights_dir_like_every_command(
    env, compose, isolated_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = compose(["paths.output_dir=/tmp/x"])
    assert Path(OmegaConf.select(cfg, "paths.weights_dir")) == W.resolve_weights_dir()


def test_offline_run_stops_before_building_listing_metrics_and_lpips_vgg(
    compose, isolated_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIDESR_OFFLINE", "1")
    wd = tmp_path / "weights"
    cfg = compose(
        [
            "perceptual=lpips_vgg",
            "metrics=[psnr,niqe]",
            "metrics.niqe.required=true",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.weights_dir={wd}",
        ]
    )
    with pytest.raises(W.WeightsMissingError) as err:
        train(cfg)
    msg = str(err.value)
    assert f"niqe_modelparameters.mat [missing] -> {wd}/hub/pyiqa" in msg
    assert f"vgg16-397923af.pth [missing] -> {wd}/hub/checkpoints" in msg
    assert f"fidesr-weights --weights-dir {wd} download --metrics niqe lpips_vgg" in msg
    assert os.environ["FIDESR_WEIGHTS_DIR"] == str(wd)  # what the run's DDP ranks inherit
    assert os.environ["HF_HOME"] == str(tmp_path / "hf")  # a user's own HF_HOME is kept


def test_fidesr_train_offline_prints_the_listing_not_a_traceback(tmp_path: Path) -> None:
    """The real command: exit status 1, the list and the fetch command on stderr, no traceback."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "FIDESR_OFFLINE": "1",
        "FIDESR_WEIGHTS_DIR": str(tmp_path / "w"),
        "HYDRA_FULL_ERROR": "0",
        "FIDESR_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    env.pop(W.MIRROR_ENV, None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "fidesr-train"),
            "perceptual=lpips_vgg",
            "metrics=[psnr]",
            f"paths.output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "fidesr-train: error: weight files missing in" in proc.stderr
    assert f"vgg16-397923af.pth [missing] -> {tmp_path}/w/hub/checkpoints" in proc.stderr
    assert f"fidesr-weights --weights-dir {tmp_path}/w download --metrics lpips_vgg" in proc.stderr
    assert "Traceback" not in proc.stderr
