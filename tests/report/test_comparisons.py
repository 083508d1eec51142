"""How comparisons.png chooses its crops (``fidesr.report.comparisons``)."""

from __future__ import annotations

import pytest
import torch

from fidesr.report.comparisons import Box, most_different_crop


def test_crop_is_where_the_configurations_differ() -> None:
    a = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[:, 40:48, 10:18] += 0.5  # the only place where the two outputs differ: an 8 px square at x=10, y=40
    x, y, score = most_different_crop([a, b], 8)
    assert (x, y) == (10, 40) and score == pytest.approx(0.25, rel=1e-5)  # std of {v, v+0.5} = 0.25
    assert most_different_crop([a, a], 8)[2] == 0.0


def test_box_parse() -> None:
    assert Box.parse("motorcycle_right_74_521:8,16,32") == Box("motorcycle_right_74_521", 8, 16, 32)
    for bad in ("a:1,2", "a:x,1,2", ":1,2,3", "a:1,2,0"):
        with pytest.raises(ValueError, match="NAME:X,Y,SIZE"):
            Box.parse(bad)
