"""The exported folder's writer is atomic: a full disk or any failure keeps the previous export intact,
a planted symlink is never followed, temporary folders of a killed export are cleaned on the next one.

The model is the session's tiny backbone with random LoRA and LRRB weights (``trained_model``)."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from fidesr.modelio import CONFIG_FILE, LORA_FILE, LRRB_FILE, TrainedWeights


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


@pytest.fixture
def weights(trained_model: dict) -> tuple[TrainedWeights, TrainedWeights]:
    """(a model, the same model with other weights: what an overwrite replaces it with)."""
    first = TrainedWeights.load(trained_model["ckpt"])
    second = dataclasses.replace(first, state={k: v * 2 for k, v in first.state.items()})
    return first, second


@pytest.mark.parametrize("fails_at", ["lrrb", "lora"])
def test_overwrite_on_a_full_disk_keeps_the_previous_export(weights, tmp_path, fails_at):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: the write raises EFBIG) as a full disk: past the
    LoRA file (2nd: the LRRB fails, as on a disk that fills mid-export) or within it (1st file fails)."""
    first, second = weights
    folder = tmp_path / "model"
    first.save_pretrained(folder)
    before = _snapshot(folder)
    lora, lrrb = ((folder / f).stat().st_size for f in (LORA_FILE, LRRB_FILE))
    assert lrrb > lora + 4096, "the LRRB file must be the larger for the 'lrrb' case"
    limit = lora + 4096 if fails_at == "lrrb" else lora // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(Exception, match="File too large") as err:
            second.save_pretrained(folder, overwrite=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    if fails_at == "lrrb":
        assert isinstance(err.value, OSError) and err.value.errno == errno.EFBIG
    # The previous export, byte for byte (was: the new LoRA beside the old LRRB and config), and no
    # temporary folder left beside it.
    assert _snapshot(folder) == before
    assert _siblings(folder) == []
    # With room again, the overwrite goes through.
    second.save_pretrained(folder, overwrite=True)
    after = TrainedWeights.load(folder)
    assert after.state.keys() == second.state.keys()
    assert all(torch.equal(after.state[k], second.state[k]) for k in second.state)
    assert _siblings(folder) == []


def test_a_planted_symlink_temporary_name_is_never_followed(weights, tmp_path):
    first, second = weights
    folder = tmp_path / "model"
    first.save_pretrained(folder)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / LORA_FILE).write_bytes(b"someone else's file")
    (victim / "notes.txt").write_text("keep me")
    # The temporary names of the old writer (inside the folder) and of this one (beside it).
    planted = [
        folder / f".{LORA_FILE}.part",
        tmp_path / ".model.abcd1234.export-new",
        tmp_path / ".model.abcd1234.export-old",
    ]
    for link in planted:
        link.symlink_to(victim, target_is_directory=True)
    second.save_pretrained(folder, overwrite=True)
    assert _snapshot(victim) == {LORA_FILE: b"someone else's file", "notes.txt": b"keep me"}
    assert not any(os.path.lexists(p) for p in planted)
    assert _siblings(folder) == ["victim"]
    after = TrainedWeights.load(folder)
    assert all(torch.equal(after.state[k], second.state[k]) for k in second.state)


def test_a_killed_export_is_cleaned_up_on_the_next_one(weights, tmp_path):
    first, second = weights
    folder = tmp_path / "model"
    first.save_pretrained(folder)
    (folder / "notes.md").write_text("the user's notes")
    # Killed between "previous folder renamed away" and "new folder renamed in": both left beside it.
    aside = tmp_path / ".model.q1w2e3r4.export-old"
    folder.rename(aside)
    half = tmp_path / ".model.z9x8c7v6.export-new"
    half.mkdir()
    (half / LORA_FILE).write_bytes(b"half written")
    others = [tmp_path / ".model2.abcd1234.export-new", tmp_path / ".model.toolong99.export-new"]
    for p in others:
        p.mkdir()
    # The next export puts the previous one back first, so that overwrite=False still refuses it.
    with pytest.raises(Exception, match="already holds an exported model"):
        second.save_pretrained(folder)
    assert (folder / CONFIG_FILE).is_file() and not aside.exists() and not half.exists()
    second.save_pretrained(folder, overwrite=True)
    assert (folder / "notes.md").read_text() == "the user's notes"  # kept beside the new export
    assert (folder / LRRB_FILE).is_file()
    assert _siblings(folder) == sorted(p.name for p in others), "only our own temporary names are removed"
