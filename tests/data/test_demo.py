"""The demo data (``fidesr.data.demo``): 16 validation pairs from scikit-image's photographs, rebuilt when
a cache from an older demo version is found."""

from __future__ import annotations

from pathlib import Path

from fidesr.data.demo import DEMO_DATA_VERSION, prepare_demo_data
from fidesr.data.imageio import list_images, load_image


def test_demo_validation_set_has_16_pairs_and_rebuilds_old_caches(tmp_path: Path) -> None:
    root = tmp_path / "demo_data"
    stale = root / "val" / "gt" / "from_an_old_version.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    (root / ".complete").write_text("ok\n")  # the marker the first demo version wrote
    prepare_demo_data(root)
    gt, lq = list_images(root / "val" / "gt"), list_images(root / "val" / "lq")
    assert not stale.exists()
    assert len(gt) == 16 and [p.name for p in gt] == [p.name for p in lq]
    assert len({p.stem.rsplit("_", 2)[0] for p in gt}) == 8  # eight photographs, several crops of some
    assert tuple(load_image(gt[0]).shape) == (3, 128, 128) and tuple(load_image(lq[0]).shape) == (3, 32, 32)
    assert len(list_images(root / "train")) == 9
    assert (root / ".complete").read_text().strip() == f"v{DEMO_DATA_VERSION}"
    before = gt[0].stat().st_mtime_ns
    prepare_demo_data(root)  # idempotent: nothing rewritten
    assert gt[0].stat().st_mtime_ns == before
