"""Resume continues and the end is kept: ``ckpt_path=last`` in a copied run folder, the final step saved
between checkpoint intervals, changed settings and another architecture refused in one line, stale
``.part`` checkpoint files removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fidesr.cli.train import train
from fidesr.errors import ConfigValueError
from fidesr.resume import (
    check_checkpoint_tensors,
    config_differences,
    newest_last_checkpoint,
    remove_stale_parts,
)


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _common(fast: list[str]) -> list[str]:
    return [*fast, "validate_before_fit=false", "callbacks.validation_images=null", "logger=csv"]


# ------------------------------------------------------------------------------------------ unit tests
def test_config_differences_lists_training_settings_only():
    stored = {
        "model": {"optimizer": {"lr": 2e-4}, "loss_chunk": 1},
        "trainer": {"max_steps": 100, "precision": "32-true"},
        "paths": {"output_dir": "/a"},
        "backbone": {"cache_dir": "/old/cache", "lora_rank": 8},
        "lrrb": {"num_blocks": 2},
    }
    current = {
        "model": {"optimizer": {"lr": 0.01}, "loss_chunk": 1},
        "trainer": {"max_steps": 200, "precision": "32-true"},
        "paths": {"output_dir": "/b"},
        "backbone": {"cache_dir": "/new/cache", "lora_rank": 8},
        "lrrb": None,
    }
    unresolved = {**current, "backbone": {"cache_dir": "${paths.cache_dir}", "lora_rank": 8}}
    diffs = config_differences(stored, current, unresolved)
    # max_steps and paths may change; cache_dir follows an interpolation (a location).
    assert diffs == ["model.optimizer.lr: 0.0002 -> 0.01", "lrrb: {'num_blocks': 2} -> null"]


def test_checkpoint_tensors_that_do_not_fit_are_one_line():
    expected = {"unet.a.lora_A": torch.zeros(4, 8), "lrrb.w": torch.zeros(3)}
    check_checkpoint_tensors("last", {"unet.a.lora_A": torch.ones(4, 8), "lrrb.w": torch.ones(3)}, expected)
    with pytest.raises(ConfigValueError) as err:
        check_checkpoint_tensors("last", {"unet.a.lora_A": torch.ones(8, 8)}, expected)
    msg = str(err.value)
    assert "\n" not in msg and "1 tensors missing (e.g. lrrb.w)" in msg
    assert "unet.a.lora_A [8, 8] in the checkpoint, [4, 8] here" in msg


def test_stale_part_files_are_removed_and_others_kept(tmp_path):
    stale = [tmp_path / ".last.ckpt.k2j3h.part", tmp_path / ".step0000100.ckpt.abc.part"]
    keep = [tmp_path / "last.ckpt", tmp_path / ".notes.part", tmp_path / "step0000100.ckpt"]
    for p in [*stale, *keep]:
        p.write_bytes(b"x")
    assert sorted(remove_stale_parts(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_newest_last_checkpoint_among_versioned_ones(tmp_path):
    assert newest_last_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    for name, step in (("last.ckpt", 100), ("last-v1.ckpt", 300), ("last-v2.ckpt", 200)):
        torch.save({"global_step": step}, tmp_path / name)
    assert newest_last_checkpoint(tmp_path) == tmp_path / "last-v1.ckpt"


# ------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def copied_run(session_train_setup, tmp_path_factory) -> dict:
    """A 3-step run with checkpoints every 2 steps, copied to another folder and resumed there twice (to
    step 5, then to step 6), and the same seeded run trained 6 steps straight."""
    compose, fast, _ = session_train_setup
    common = [*_common(fast), "trainer.val_check_interval=2"]
    root = tmp_path_factory.mktemp("resume")
    first, copy, straight = root / "first", root / "copy", root / "straight"
    train(compose([*common, "trainer.max_steps=3", f"paths.output_dir={first}"]))
    end_step = _step(first / "checkpoints" / "last.ckpt")
    first_files = sorted(p.name for p in (first / "checkpoints").iterdir())
    shutil.copytree(first, copy)
    stale = copy / "checkpoints" / ".last.ckpt.x7q2m.part"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"partial")
    steps = []
    for max_steps in (5, 6):
        train(
            compose([*common, f"trainer.max_steps={max_steps}", f"paths.output_dir={copy}", "ckpt_path=last"])
        )
        steps.append(_step(copy / "checkpoints" / "last.ckpt"))
    train(compose([*common, "trainer.max_steps=6", f"paths.output_dir={straight}"]))
    return {
        "end_step": end_step,
        "first_files": first_files,
        "steps": steps,
        "copy": copy,
        "straight": straight,
        "stale": stale,
        "common": common,
        "compose": compose,
    }


@pytest.mark.slow
def test_end_of_training_saves_the_final_step_between_intervals(copied_run):
    # max_steps=3 with checkpoints every 2 steps: last.ckpt holds step 3 (was: step 2).
    assert copied_run["end_step"] == 3
    assert copied_run["first_files"] == ["last.ckpt", "step0000002.ckpt"]


@pytest.mark.slow
def test_two_resumes_in_a_copied_run_folder_continue_and_stay_exact(copied_run):
    # Each resume advances last.ckpt (was: last-v1.ckpt, last-v2.ckpt beside a last.ckpt at step 3).
    assert copied_run["steps"] == [5, 6]
    files = sorted(p.name for p in (copied_run["copy"] / "checkpoints").iterdir())
    assert files == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
    assert not copied_run["stale"].exists()
    # Resumed from the end-of-run save at step 3 and from step 5: the weights of a straight 6-step run.
    a = torch.load(copied_run["straight"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(copied_run["copy"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.optimizer.lr=0.01", "model.optimizer.lr: 0.0005 -> 0.01"),
        ("backbone.lora_rank=4", "backbone.lora_rank: 8 -> 4"),
        ("lrrb=off", "lrrb: {"),
    ],
)
def test_changed_settings_at_resume_are_refused_with_the_differences(copied_run, override, expected):
    compose, run = copied_run["compose"], copied_run["copy"]
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigValueError) as err:
        train(compose([*copied_run["common"], override, "trainer.max_steps=8", f"paths.output_dir={run}",
                       "ckpt_path=last"]))  # fmt: skip
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("ckpt_path=last: the run was trained with other settings")
    assert expected in msg and "max_steps" not in msg
    assert (run / "config.yaml").read_text() == before, "nothing recorded for a refused resume"
