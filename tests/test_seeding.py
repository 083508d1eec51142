"""seeding.py: the one hash-to-seed rule gives exactly the integers the three seeded streams drew before it
was shared (training steps, training samples, fidesr-degrade's images): pinned literals, computed from the
code as it was (``_seed_of`` of data/datasets.py, ``step_seed`` of model.py, ``image_seed`` of
cli/degrade.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fidesr.cli.degrade import image_seed
from fidesr.model import FiDeSRModule
from fidesr.seeding import derive_seed

# (seed, global step, rank, stream) -> FiDeSRModule.step_seed
STEP_SEEDS = [
    ((0, 0, 0, 0), 3580143536288835636),
    ((42, 100, 0, 1), 2927129076278933255),
    ((42, 100, 3, 2), 3113832776164895375),
    ((2024, 123456, 1, 0), 4963391513233103336),
]
# (seed, index) -> the training dataset's per-sample seed
SAMPLE_SEEDS = [
    ((0, 0), 6113538345208582997),
    ((42, 7), 4223497919570781570),
    ((1234, 99999), 3729403799297259615),
    ((0, "x"), 5154572919779615919),
]
# (--seed, file name) -> fidesr-degrade's per-image seed
IMAGE_SEEDS = [
    ((0, "a.png"), 9089916201048199586),
    ((1, "a.png"), 3388635724509897938),
    ((42, "img_001.jpg"), 4136482240354148072),
    ((7, "été.png"), 4125693726969928770),
]


@pytest.mark.parametrize(("parts", "expected"), STEP_SEEDS)
def test_step_seed_is_unchanged(parts: tuple, expected: int) -> None:
    seed, step, rank, stream = parts
    module = SimpleNamespace(seed=seed, global_step=step, global_rank=rank)
    assert FiDeSRModule.step_seed(module, stream) == expected
    assert derive_seed(*parts) == expected


@pytest.mark.parametrize(("parts", "expected"), SAMPLE_SEEDS)
def test_sample_seed_is_unchanged(parts: tuple, expected: int) -> None:
    assert derive_seed(*parts) == expected  # HQImageDataset seeds sample ``index`` with (seed, index)


@pytest.mark.parametrize(("parts", "expected"), IMAGE_SEEDS)
def test_image_seed_is_unchanged(parts: tuple, expected: int) -> None:
    assert image_seed(*parts) == expected
    assert derive_seed(*parts, sep=":") == expected


def test_derive_seed_is_63_bits_of_the_joined_text() -> None:
    import hashlib

    digest = hashlib.sha256(b"42/7").digest()
    assert derive_seed(42, 7) == int.from_bytes(digest[:8], "little") % 2**63
    assert derive_seed("42/7") == derive_seed(42, 7)  # the text is what is hashed
    assert all(0 <= derive_seed(i) < 2**63 for i in range(200))
