"""A full disk is one line naming the file, for every command that writes (degrade, upscale and eval have
their own tests in test_degrade.py, test_upscale.py, test_eval.py): export, weights, and the Hydra apps'
own files. Simulated without a tmpfs: ``RLIMIT_FSIZE`` (conftest ``full_disk``) makes a write past the limit
fail with EFBIG, as ENOSPC would."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def test_export(trained_model: dict, tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]) -> None:
    from fidesr.cli.export import main

    out = tmp_path / "export"
    with full_disk(1000), pytest.raises(SystemExit) as stop:  # the LoRA file is larger
        main([str(trained_model["ckpt"]), "-o", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" not in err
    assert err.startswith(f"fidesr-export: error: no space left writing {out}") and "(File too large)" in err
    assert len(err.strip().splitlines()) == 1


def test_weights(tmp_path: Path, full_disk, capsys: pytest.CaptureFixture[str]) -> None:
    from fidesr.cli.weights import main
    from fidesr.weights.registry import files_for

    mirror, wd = tmp_path / "mirror", tmp_path / "weights"
    mirror.mkdir()
    (f,) = files_for(["niqe"]).values()
    (mirror / f.filename).write_bytes(b"\0" * 20_000)  # the checksum is never reached: the write fails first
    with full_disk(1000):
        code = main(["--weights-dir", str(wd), "download", "--metrics", "niqe", "--mirror", str(mirror)])
    err = capsys.readouterr().err
    dest = next(wd.rglob(f".{f.filename}.lock")).with_name(f.filename)
    assert code == 1 and "Traceback" not in err and "connection dropped" not in err
    assert f"fidesr-weights: error: no space left writing {dest} (File too large)\n" in err
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def _limited(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_train_hydra_files(tmp_path: Path) -> None:
    """Hydra writes .hydra/config.yaml before fidesr-train's task runs: that write too is one line."""
    exe = Path(sys.executable).with_name("fidesr-train")
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(exe), "experiment=demo", f"paths.output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _limited(2000),  # tempfile's probe fits, the composed config does not
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        proc.stderr
        == f"fidesr-train: error: no space left writing {out}/.hydra/config.yaml (File too large)\n"
    )
