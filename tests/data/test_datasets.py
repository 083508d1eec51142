"""Training/test datasets: determinism, weighted sources, bad files, pairing errors, sharded resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fidesr.data.datamodule import SRDataModule
from fidesr.data.datasets import DataSourceError, HQImageDataset, PairedImageDataset, StepSampler, match_pairs
from fidesr.data.degradations import BicubicDegradation


def _write(folder, names, size=(40, 48), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / n)
    return folder


def test_samples_are_a_function_of_seed_and_index(tmp_path):
    src = _write(tmp_path / "hq", ["a.png", "b.png", "c.png"])
    deg = BicubicDegradation()
    ds1 = HQImageDataset([str(src)], crop_size=32, degradation=deg, seed=7)
    ds2 = HQImageDataset([str(src)], crop_size=32, degradation=deg, seed=7)
    other = HQImageDataset([str(src)], crop_size=32, degradation=deg, seed=8)
    a, b, c = ds1[5], ds2[5], other[5]
    assert a["gt"].shape == (3, 32, 32) and 0 <= a["gt"].min() and a["gt"].max() <= 1
    assert torch.equal(a["gt"], b["gt"]) and all(torch.equal(a["deg"][k], b["deg"][k]) for k in a["deg"])
    assert not torch.equal(a["gt"], c["gt"]) or not torch.equal(a["deg"]["seed"], c["deg"]["seed"])
    assert a["skipped"] == 0 and a["prompt"] == ""


def test_small_images_are_upscaled_to_the_crop(tmp_path):
    src = _write(tmp_path / "hq", ["tiny.png"], size=(10, 20))
    item = HQImageDataset([str(src)], crop_size=32)[0]
    assert item["gt"].shape == (3, 32, 32)


def test_gray_prob_turns_that_share_of_crops_grey_and_zero_draws_nothing(tmp_path):
    src = _write(tmp_path / "hq", ["a.png", "b.png"])
    deg = BicubicDegradation()
    plain = HQImageDataset([str(src)], crop_size=16, degradation=deg, seed=3)
    off = HQImageDataset([str(src)], crop_size=16, degradation=deg, seed=3, gray_prob=0.0)
    for i in range(5):  # 0 consumes no random draw: crops and degradation params as without the option
        a, b = plain[i], off[i]
        assert torch.equal(a["gt"], b["gt"]) and all(torch.equal(a["deg"][k], b["deg"][k]) for k in a["deg"])
    grey = HQImageDataset([str(src)], crop_size=16, seed=3, gray_prob=0.5)
    items = [grey[i]["gt"] for i in range(200)]
    is_grey = [bool(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])) for x in items]
    assert 0.38 < sum(is_grey) / 200 < 0.62  # the random colour test images are never grey by themselves
    g = next(x for x, flag in zip(items, is_grey, strict=True) if flag)
    assert 0 <= g.min() and g.max() <= 1
    with pytest.raises(DataSourceError, match="gray_prob"):
        HQImageDataset([str(src)], crop_size=16, gray_prob=1.5)


def test_source_weights_are_respected(tmp_path):
    a = _write(tmp_path / "a", ["x.png"])
    b = _write(tmp_path / "b", ["y.png"])
    ds = HQImageDataset([{"path": str(a), "weight": 3.0}, {"path": str(b), "weight": 1.0}], crop_size=16)
    names = [ds[i]["name"] for i in range(400)]
    assert 0.68 < names.count("x") / 400 < 0.82


def test_unreadable_files_are_skipped_counted_and_named(tmp_path, caplog):
    src = _write(tmp_path / "hq", ["good.png"])
    (src / "bad.png").write_bytes(b"not a png")
    ds = HQImageDataset([str(src)], crop_size=16, seed=0)
    items = [ds[i] for i in range(30)]
    assert all(it["name"] == "good" for it in items)
    assert sum(it["skipped"] for it in items) > 0
    assert "bad.png" in caplog.text and str(src / "bad.png") in ds.bad.skipped


def test_unusable_sources_fail_before_training_naming_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match="no image files: .*empty"):
        HQImageDataset([str(empty)])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"junk")
    ds = HQImageDataset([str(broken)])
    with pytest.raises(DataSourceError, match="no readable image.*broken"):
        ds.check_readable()
    with pytest.raises(DataSourceError, match="does not exist"):
        HQImageDataset([str(tmp_path / "missing")])


def test_file_list_source(tmp_path):
    src = _write(tmp_path / "imgs", ["a.png", "b.png"])
    lst = tmp_path / "list.txt"
    lst.write_text("# first 10k\nimgs/a.png\n\n")
    ds = HQImageDataset([str(lst)], crop_size=16)
    assert {ds[i]["name"] for i in range(10)} == {"a"}
    assert src.is_dir()


def test_pairs_matched_by_name_with_clear_error(tmp_path):
    _write(tmp_path / "lq", ["a.png", "b.png", "c.png"], size=(8, 8))
    _write(tmp_path / "gt", ["a.png", "b.png", "d.png"], size=(32, 32))
    with pytest.raises(DataSourceError, match=r"only in LQ \['c'\].*only in GT \['d'\]"):
        match_pairs(tmp_path / "lq", tmp_path / "gt")
    (tmp_path / "gt" / "d.png").rename(tmp_path / "gt" / "c.png")
    (tmp_path / "gt" / "b.png").write_bytes(b"corrupt")
    ds = PairedImageDataset(str(tmp_path / "lq"), str(tmp_path / "gt"), name="t")
    assert [p[0] for p in ds.pairs] == ["a", "c"]  # the unreadable pair is dropped, the set goes on
    assert ds[0]["lq"].shape == (3, 8, 8) and ds[0]["gt"].shape == (3, 32, 32)


def test_step_sampler_shards_and_resumes():
    full = list(StepSampler(24))
    ranks = [list(StepSampler(24, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for r in ranks for i in r) == full
    # Resuming at step 2 with 3 ranks x batch 2 skips exactly the 12 consumed indices (4 per rank).
    resumed = [list(StepSampler(24, start=12, rank=r, world_size=3)) for r in range(3)]
    assert [r[4:] for r in ranks] == resumed
    # The length stays the whole epoch's (8 per rank): Lightning counts a restored mid-epoch batch index
    # against it (tests/cli/test_train.py::test_signal_saves_a_checkpoint_and_resume_is_exact resumes at step 3 of 12).
    assert len(StepSampler(24, start=12, rank=1, world_size=3)) == len(ranks[1]) == 8


def test_datamodule_builds_named_sets(tmp_path):
    hq = _write(tmp_path / "hq", ["a.png"])
    _write(tmp_path / "lq", ["v.png"], size=(8, 8))
    _write(tmp_path / "gt", ["v.png"], size=(32, 32))
    dm = SRDataModule(
        train_sources=[{"path": str(hq)}],
        val_sets={"mine": {"lq": str(tmp_path / "lq"), "gt": str(tmp_path / "gt")}},
        degradation=BicubicDegradation(),
        crop_size=32,
        batch_size=2,
        num_workers=0,
        pin_memory=False,
    )
    dm.setup("fit")
    assert dm.val_set_names == ["mine"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["gt"].shape == (2, 3, 32, 32) and "seed" in batch["deg"] and batch["skipped"].shape == (2,)
    val = next(iter(dm.val_dataloader()[0]))
    assert val["name"] == ["v"]
