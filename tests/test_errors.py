"""errors.py: a full disk as one line naming the file, whoever wrote; per-command advice for a refused pickle."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from fidesr.errors import DiskFullError, PickleRefusedError, report_errors, user_error


def test_a_full_disk_names_the_file_whoever_wrote_it(tmp_path: Path, full_disk) -> None:
    from fidesr.data.imageio import atomic_write

    # A plain write() error names no file: the one open for writing in the failing frames is named.
    with full_disk(10), pytest.raises(OSError) as info:
        (tmp_path / "notes.txt").write_text("x" * 100)
    err = user_error(info.value)
    assert isinstance(err, DiskFullError) and err.errno == 27
    assert str(err) == f"no space left writing {tmp_path / 'notes.txt'} (File too large)"
    # torch.save turns the failed write into a RuntimeError; atomic_write still names the final file and
    # leaves nothing behind.
    with full_disk(1000), pytest.raises(DiskFullError) as info2:
        with atomic_write(tmp_path / "last.ckpt") as fh:
            torch.save({"w": torch.zeros(10_000)}, fh)
    assert str(info2.value) == f"no space left writing {tmp_path / 'last.ckpt'} (File too large)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # Anything else stays a bug with its traceback.
    assert user_error(OSError(13, "Permission denied")) is None


def _foreign_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "cfg": argparse.Namespace(a=1)}, path)
    return path


def test_pickle_advice_names_only_what_the_command_has(tmp_path: Path, capsys) -> None:
    """fidesr-upscale/-app/-export have --unsafe-pickle, fidesr-eval has unsafe_pickle=true, fidesr-train
    has neither (it resumes from its own checkpoints)."""
    from fidesr.callbacks.training import AtomicCheckpointIO
    from fidesr.cli.eval import EVAL_ADVICE
    from fidesr.cli.export import main as export
    from fidesr.cli.train import _train_advice
    from fidesr.modelio import TrainedWeights

    path = _foreign_pickle(tmp_path)
    with pytest.raises(PickleRefusedError) as info:
        TrainedWeights.load(path)
    assert "unsafe" not in str(info.value) and "refusing to load" in str(info.value)  # neutral in Python

    with pytest.raises(SystemExit) as stop:
        export([str(path), "-o", str(tmp_path / "out")])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fidesr-export: error: {path}: refusing to load")
    assert err.rstrip().endswith(
        "; if you trust the file's origin, --unsafe-pickle unpickles it fully, which runs any code it names"
    )

    with pytest.raises(SystemExit):
        report_errors("fidesr-eval", lambda: TrainedWeights.load(path), advice=EVAL_ADVICE)
    err = capsys.readouterr().err
    assert "unsafe_pickle=true unpickles it fully" in err and "--unsafe-pickle" not in err

    with pytest.raises(SystemExit):  # what resuming from ckpt_path=foreign.ckpt reads
        report_errors(
            "fidesr-train", lambda: AtomicCheckpointIO().load_checkpoint(path), advice=_train_advice()
        )
    err = capsys.readouterr().err
    assert err.startswith(f"fidesr-train: error: {path}: refusing to load this training checkpoint")
    assert "unsafe" not in err and "ckpt_path must be a checkpoint fidesr-train wrote" in err
    assert len(err.strip().splitlines()) == 1


def test_input_errors_of_data_prompts_and_app_are_one_line(tmp_path: Path, capsys) -> None:
    """What a user's data source, tags file or upload gets wrong is a FidesrError (one line in every CLI),
    and still the built-in type code catches."""
    from fidesr.app import AppInputError, RequestTimeoutError
    from fidesr.data.datasets import DataSourceError, read_file_list
    from fidesr.data.prompts import PromptsError, RAMUnavailableError
    from fidesr.errors import FidesrError

    for cls, base in [
        (DataSourceError, ValueError),
        (PromptsError, KeyError),
        (RAMUnavailableError, RuntimeError),
        (AppInputError, ValueError),
        (RequestTimeoutError, RuntimeError),
    ]:
        assert issubclass(cls, FidesrError) and issubclass(cls, base), cls
    assert str(PromptsError("no tags for 'a'")) == "no tags for 'a'"  # not KeyError's quoted repr

    with pytest.raises(SystemExit) as stop:
        report_errors("fidesr-train", lambda: read_file_list(tmp_path / "nope"))
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"fidesr-train: error: data source does not exist or is not a folder/list: {tmp_path / 'nope'}\n"
    )
