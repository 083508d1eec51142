"""fidesr-train as users run it: multirun sweeps, 2-process DDP on CPU, W&B offline, errors, checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fidesr.callbacks.training import AtomicCheckpointIO

BIN = Path(sys.executable).parent
SMOKE = ["callbacks.validation_images=null", "validate_before_fit=false", "trainer.max_steps=1",
         "trainer.val_check_interval=1", "data.val_batch_size=4"]  # fmt: skip


def _run(args: list[str], cache_dir: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "FIDESR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
               "HYDRA_FULL_ERROR": "0", **env}  # fmt: skip
    return subprocess.run([str(BIN / "fidesr-train"), *args], capture_output=True, text=True, timeout=timeout, env=environ)


@pytest.mark.slow
def test_multirun_jobs_get_their_own_dirs_and_wandb_runs(fast_train_overrides, cache_dir, tmp_path):
    proc = _run(["-m", *fast_train_overrides, *SMOKE, "lrrb=on,off", "logger=wandb", f"paths.runs_dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "demo").glob("multirun_*"))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and jobs[0].startswith("0_") and "lrrb=on" in jobs[0] and "lrrb=off" in jobs[1]
    for job in jobs:
        d = sweep / job
        assert (d / "checkpoints" / "last.ckpt").is_file(), job
        assert (d / "metrics.csv").is_file() and (d / "config.yaml").is_file()
        runs = list((d / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: one W&B run per job, finished and written offline"
    off = torch.load(sweep / jobs[1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("lrrb.") for k in off["state_dict"])


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(fast_train_overrides, cache_dir, tmp_path):
    out = tmp_path / "ddp"
    # The chunked pixel losses (an autograd.grad inside training_step) run under DDP too.
    proc = _run([*fast_train_overrides, *SMOKE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.precision=32-true", "trainer.max_steps=2", f"paths.output_dir={out}",
                 "model.loss_chunk=1"], cache_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in (proc.stdout + proc.stderr) or "distributed_backend=gloo" in proc.stderr
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


def test_unknown_option_shows_hydra_choices(cache_dir):
    proc = _run(["lrrb=maybe"], cache_dir, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'lrrb/maybe'" in proc.stderr and "Available options" in proc.stderr


def test_missing_pretrained_folder_is_one_clear_line(cache_dir, tmp_path):
    proc = _run(["backbone=sd21", f"backbone.pretrained={tmp_path}/nope", "trainer=cpu", "data=demo",
                 "perceptual=standin", "metrics=[psnr]", f"paths.output_dir={tmp_path}/run"], cache_dir, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert f"backbone.pretrained={tmp_path}/nope: no such folder" in proc.stderr


def test_interrupted_checkpoint_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    real_save = torch.save

    def interrupted(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
