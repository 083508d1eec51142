"""fidesr-train as users run it: multirun sweeps, 2-process DDP on CPU, W&B offline, errors, checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fidesr.callbacks.training import AtomicCheckpointIO

BIN = Path(sys.executable).parent
SMOKE = [
    "callbacks.validation_images=null",
    "validate_before_fit=false",
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "data.val_batch_size=4",
]


def _run(args: list[str], cache_dir: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "FIDESR_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "0",
        **env,
    }
    return subprocess.run(
        [str(BIN / "fidesr-train"), *args], capture_output=True, text=True, timeout=timeout, env=environ
    )


@pytest.mark.slow
def test_multirun_jobs_get_their_own_dirs_and_wandb_runs(fast_train_overrides, cache_dir, tmp_path):
    proc = _run(
        ["-m", *fast_train_overrides, *SMOKE, "lrrb=on,off", "logger=wandb", f"paths.runs_dir={tmp_path}"],
        cache_dir,
    )
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
    proc = _run(
        [
            *fast_train_overrides,
            *SMOKE,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "trainer.max_steps=2",
            f"paths.output_dir={out}",
            "model.loss_chunk=1",
        ],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in (proc.stdout + proc.stderr) or "distributed_backend=gloo" in proc.stderr
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


def test_unknown_option_shows_hydra_choices(cache_dir):
    proc = _run(["lrrb=maybe"], cache_dir, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'lrrb/maybe'" in proc.stderr and "Available options" in proc.stderr


def test_missing_pretrained_folder_is_one_clear_line(cache_dir, tmp_path):
    proc = _run(
        [
            "backbone=sd21",
            f"backbone.pretrained={tmp_path}/nope",
            "trainer=cpu",
            "data=demo",
            "perceptual=standin",
            "metrics=[psnr]",
            f"paths.output_dir={tmp_path}/run",
        ],
        cache_dir,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"fidesr-train: error: backbone.pretrained={tmp_path}/nope: no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr


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


SIGNAL_STEPS = 12


@pytest.fixture(scope="module")
def signal_run_setup(session_train_setup, cache_dir, tmp_path_factory) -> tuple[list[str], Path]:
    """The overrides of the interrupted runs and the last.ckpt of the same run left uninterrupted."""
    _, fast, _ = session_train_setup
    common = [*fast, "callbacks.validation_images=null", "trainer.val_check_interval=1000",
              f"trainer.max_steps={SIGNAL_STEPS}"]  # fmt: skip
    ref = tmp_path_factory.mktemp("uninterrupted")
    proc = _run([*common, f"paths.output_dir={ref}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return common, ref / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_is_exact(sig, signal_run_setup, cache_dir, tmp_path):
    """A real run gets SIGINT (Ctrl-C) or SIGTERM (a scheduler) mid-way: it saves last.ckpt at the step it
    was on, says so and exits 128 + signal; ckpt_path=last then ends with the weights of an uninterrupted run."""
    steps = SIGNAL_STEPS
    common, ref_ckpt = signal_run_setup

    out, marker = tmp_path / "run", tmp_path / "step3"
    environ = {
        **os.environ,
        "FIDESR_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parent),
    }
    pace = f"+callbacks.pace={{_target_:train_helpers.Pace,marker:'{marker}',after:3}}"
    proc = subprocess.Popen(
        [str(BIN / "fidesr-train"), *common, f"paths.output_dir={out}", pace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never reached step 3"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "saved" in stderr and "ckpt_path=last" in stderr and "Traceback" not in stderr
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert 3 <= saved["global_step"] < steps
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]

    resumed = _run([*common, f"paths.output_dir={out}", "ckpt_path=last"], cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(ref_ckpt, weights_only=True)
    b = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_wrong_type_in_an_override_names_the_key(cache_dir, tmp_path):
    proc = _run(
        ["experiment=demo", "trainer.max_steps=abc", f"paths.output_dir={tmp_path}/run"],
        cache_dir,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "fidesr-train: error: trainer.max_steps = 'abc': expected int" in proc.stderr
    assert "Traceback" not in proc.stderr
