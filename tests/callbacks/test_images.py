"""Rendering of the validation grids (``fidesr.callbacks.images.render_grid``): column titles above the
images, a colour bar under the map columns, the images themselves untouched."""

from __future__ import annotations

import torch

from fidesr.callbacks.images import COLUMN_LABELS, _colormap, render_grid


def test_grid_has_titles_colour_bar_and_the_images() -> None:
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(2, 3, 64, 64, generator=g) for _ in range(3)]
    maps = [_colormap(torch.rand(2, 1, 64, 64, generator=g)) for _ in range(2)]
    plain = render_grid(imgs, list(COLUMN_LABELS[:3]), n_maps=0)
    full = render_grid(imgs + maps, list(COLUMN_LABELS), n_maps=2)
    width = 5 * (64 + 2) + 2
    assert full.shape[0] == 3 and full.shape[-1] == width
    grid_h = 2 * (64 + 2) + 2
    head = plain.shape[-2] - grid_h
    assert head > 8 and full.shape[-2] > plain.shape[-2]  # title strip; colour bar strip under the maps
    # Titles: dark text pixels above every column.
    for i in range(5):
        strip = full[:, :head, i * 66 : (i + 1) * 66]
        assert (strip.mean(0) < 0.5).any(), COLUMN_LABELS[i]
    # The first image sits below the titles, 8-bit rounded but otherwise unchanged.
    top = full[:, head + 2 : head + 66, 2:66]
    assert torch.allclose(top, imgs[0][0], atol=1 / 255 + 1e-6)
    # Colour bar under the two map columns only: coloured (not grey) there, white under the images.
    bar = full[:, head + grid_h + 2 : head + grid_h + 8, :]
    assert (bar[:, :, 3 * 66 + 4 :].std(0) > 0.05).any() and (bar[:, :, : 3 * 66].min() > 0.99)


def test_colormap_scales_each_map_to_its_max() -> None:
    m = torch.tensor([[[[0.0, 2.0]]], [[[0.0, 10.0]]]])  # [2,1,1,2]: different ranges, same shape
    out = _colormap(m)
    assert out.shape == (2, 3, 1, 2) and torch.equal(
        out[0], out[1]
    )  # both 0 -> min colour, max -> top colour


def test_the_weight_column_is_the_training_steps_daw_call() -> None:
    """The grid's DAW column is DetailAwareWeighting's own call (daw.p included), not a second copy of it."""
    import types

    from fidesr.callbacks.images import ValidationImages
    from fidesr.components.daw import DetailAwareWeighting
    from fidesr.components.perceptual import PerceptualLoss

    g = torch.Generator().manual_seed(1)
    rows = [
        {
            "lq": torch.rand(3, 32, 32, generator=g),
            "sr": torch.rand(3, 32, 32, generator=g),
            "gt": torch.rand(3, 32, 32, generator=g),
        }
        for _ in range(2)
    ]
    torch.manual_seed(0)
    perceptual = PerceptualLoss(backbone="random")
    cols = {}
    for p in (0.0, 1.0):
        daw = DetailAwareWeighting(p=p, warmup_steps=0, ramp_steps=0)
        module = types.SimpleNamespace(
            daw=daw, perceptual=perceptual, device=torch.device("cpu"), global_step=5
        )
        cols[p] = ValidationImages()._columns(module, rows)
        sr, gt = torch.stack([r["sr"] for r in rows]) * 2 - 1, torch.stack([r["gt"] for r in rows]) * 2 - 1
        with torch.no_grad():
            expected = daw(sr, gt, perceptual(sr, gt), 5)
        assert torch.equal(cols[p][-1], _colormap(expected))
    assert not torch.equal(cols[0.0][-1], cols[1.0][-1])
