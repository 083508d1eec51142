"""Upscaler: the loop fidesr-upscale and fidesr-eval's checkpoint mode share (tiny backbone, real files)."""

from __future__ import annotations

from pathlib import Path

import torch

from fidesr.data.imageio import load_image, save_image
from fidesr.upscaling import Upscaler


def _pipe(make_tiny_backbone):
    from fidesr.pipeline import FiDeSRPipeline

    return FiDeSRPipeline(make_tiny_backbone(), None, None, min_lq_size=16, color_fix="none")


def test_a_bad_file_fails_alone_and_results_do_not_depend_on_batching(make_tiny_backbone, tmp_path: Path):
    pipe = _pipe(make_tiny_backbone)
    g = torch.Generator().manual_seed(0)
    lqs = []
    for i in range(3):
        lqs.append(save_image(torch.rand(3, 16, 16, generator=g), tmp_path / "lq" / f"im{i}.png"))
    bad = tmp_path / "lq" / "broken.png"
    bad.write_bytes(b"not a png")
    reported: list[tuple[str, str]] = []
    jobs = [(p, tmp_path / "one" / p.name) for p in [*lqs, bad]]
    one = Upscaler(pipe, seed=3, batch_size=1, progress=False, report=lambda n, w: reported.append((n, w)))
    assert one.run(jobs) == [tmp_path / "one" / p.name for p in lqs]
    assert [n for n, _ in one.failed] == [str(bad)] and reported == one.failed
    assert "cannot read image" in one.failed[0][1] and not (tmp_path / "one" / "broken.png").exists()
    # Seeded before every batch: three images in one batch give what one at a time gave (the same noise;
    # batched convolutions round differently, so within one 8-bit level).
    together = Upscaler(pipe, seed=3, batch_size=3, progress=False)
    together.run([(p, tmp_path / "all" / p.name) for p in lqs])
    for p in lqs:
        a, b = load_image(tmp_path / "all" / p.name), load_image(tmp_path / "one" / p.name)
        assert (a - b).abs().max() <= 1 / 255 + 1e-6 and (a != b).float().mean() < 0.01
    # And what the pipeline itself gives for that seed.
    direct = pipe(load_image(lqs[0])[None], generator=torch.Generator().manual_seed(3)).sr[0]
    saved = load_image(save_image(direct, tmp_path / "direct.png"))
    torch.testing.assert_close(load_image(tmp_path / "one" / lqs[0].name), saved, rtol=0, atol=0)
