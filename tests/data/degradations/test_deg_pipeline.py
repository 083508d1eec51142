"""Degradation presets against the contract: determinism, shapes, per-sample params, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from fidesr.data.degradations import (
    PRESETS,
    BicubicDegradation,
    Degradation,
    RealESRGANDegradation,
    load_preset,
)


def _gt(b: int, h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(x, 5, 1, 2)


def _params(deg: Degradation, seeds: list[int]) -> dict[str, torch.Tensor]:
    return default_collate([deg.sample(torch.Generator().manual_seed(s)) for s in seeds])


def _slice(params: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i : i + 1] for k, v in params.items()}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_instantiate_and_follow_the_protocol(name: str) -> None:
    deg = load_preset(name)
    assert isinstance(deg, Degradation)
    assert deg.scale == 4 and deg.resize_back is True
    expected = BicubicDegradation if name.startswith("bicubic") else RealESRGANDegradation
    assert isinstance(deg, expected)


@pytest.mark.parametrize("name", PRESETS)
def test_sample_is_fixed_shape_seeded_and_has_an_int64_seed(name: str) -> None:
    deg = load_preset(name)
    a = deg.sample(torch.Generator().manual_seed(7))
    b = deg.sample(torch.Generator().manual_seed(7))
    c = deg.sample(torch.Generator().manual_seed(8))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert a["seed"].dtype == torch.int64 and a["seed"].ndim == 0
    shapes = {k: v.shape for k, v in a.items()}
    for seed in range(30):  # every draw has the same shapes, so the default collate stacks them
        s = deg.sample(torch.Generator().manual_seed(seed))
        assert {k: v.shape for k, v in s.items()} == shapes
    if not name.startswith("bicubic"):
        assert a["kernel1"].shape == a["kernel2"].shape == a["sinc_kernel"].shape == (21, 21)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("resize_back", [False, True])
def test_shapes_range_and_determinism(name: str, resize_back: bool) -> None:
    deg = load_preset(name, resize_back=resize_back)
    gt = _gt(3)
    params = _params(deg, [1, 2, 3])
    lq = deg.apply(gt, params)
    assert lq.shape == ((3, 3, 64, 80) if resize_back else (3, 3, 16, 20))
    assert lq.dtype == torch.float32 and lq.min() >= 0 and lq.max() <= 1
    if not resize_back:  # the LQ holds 8-bit levels, like an image file
        assert torch.equal((lq * 255).round(), lq * 255)
    assert torch.equal(lq, deg.apply(gt, params))  # same params + input -> bit-identical
    other = deg.apply(gt, _params(deg, [4, 5, 6]))
    assert torch.equal(lq, other) == (name == "bicubic_clean")  # the clean preset draws nothing that matters


@pytest.mark.parametrize("name", PRESETS)
def test_batched_apply_equals_per_sample_apply(name: str) -> None:
    """Tolerance: the ops are the same per sample, but batched kernels (grouped convolution, DCT as a batched
    matmul) may sum in another order; a last-bit difference can flip one 8-bit rounding (1/255) and, rarely, one
    JPEG quantisation step. At these sizes the outputs are identical in practice; the bound allows rare flips."""
    deg = load_preset(name, resize_back=False)
    gt = _gt(4, seed=1)
    params = _params(deg, [11, 12, 13, 14])
    batched = deg.apply(gt, params)
    single = torch.cat([deg.apply(gt[i : i + 1], _slice(params, i)) for i in range(4)])
    diff = (batched - single).abs()
    assert float(diff.mean()) < 0.1 / 255
    assert float((diff > 1.5 / 255).float().mean()) < 1e-3


def test_bicubic_jpeg_quality_differs_per_sample_in_a_batch() -> None:
    deg = BicubicDegradation(noise_sigma=(0, 0), jpeg_quality=(10, 95), resize_back=False)
    gt = _gt(1, 64, 64).expand(2, -1, -1, -1).contiguous()
    params = {
        "noise_sigma": torch.zeros(2),
        "jpeg_quality": torch.tensor([10.0, 95.0]),
        "seed": torch.tensor([0, 0]),
    }
    lq = deg.apply(gt, params)
    assert not torch.equal(lq[0], lq[1])
    clean = F.interpolate(gt[:1], size=(16, 16), mode="bicubic", antialias=True)
    assert (lq[0] - clean[0]).abs().mean() > (lq[1] - clean[0]).abs().mean()
    for i in range(2):
        assert torch.equal(lq[i : i + 1], deg.apply(gt[i : i + 1], _slice(params, i)))


def test_bicubic_clean_is_the_demo_validation_lq(tmp_path) -> None:
    """``degradation=bicubic_clean`` makes exactly the LQ of the demo's validation pairs (antialiased bicubic,
    8-bit), so the demo trains on the task it is validated on; ``bicubic`` adds noise and JPEG to it."""
    from fidesr.data.demo import prepare_demo_data
    from fidesr.data.imageio import list_images, load_image

    root = prepare_demo_data(tmp_path / "demo")
    gt_path, lq_path = list_images(root / "val" / "gt")[0], list_images(root / "val" / "lq")[0]
    gt, lq = load_image(gt_path)[None], load_image(lq_path)[None]
    clean = load_preset("bicubic_clean", resize_back=False)
    params = _params(clean, [3])
    assert "jpeg_quality" not in params and float(params["noise_sigma"]) == 0.0
    assert torch.equal(clean.apply(gt, params), lq)
    noisy = load_preset("bicubic", resize_back=False)
    assert (noisy.apply(gt, _params(noisy, [3])) - lq).abs().mean() > 1 / 255
    assert "jpeg_quality=None" in repr(clean)


def test_realesrgan_stage_choices_are_per_sample() -> None:
    deg = load_preset("osediff")
    params = _params(deg, list(range(64)))
    for key in ("resize1_mode", "noise1_gaussian", "final_resize_first", "kernel1_type"):
        assert params[key].unique().numel() > 1, key
    assert (params["resize1_scale"] >= 0.15).all() and (params["resize1_scale"] <= 1.5).all()
    assert (params["jpeg1_quality"] >= 30).all() and (params["jpeg1_quality"] <= 95).all()


def test_pisasr_preset_is_milder_than_osediff_in_its_ranges() -> None:
    o, p = load_preset("osediff"), load_preset("pisasr")
    for key in ("noise_range", "poisson_scale_range"):
        assert p.stages[0][key][1] < o.stages[0][key][1] and p.stages[1][key][1] < o.stages[1][key][1]
    assert p.stages[0]["jpeg_range"][0] > o.stages[0]["jpeg_range"][0]
    assert p.stages[1]["blur_prob"] < o.stages[1]["blur_prob"]


def test_invalid_inputs_are_rejected() -> None:
    deg = load_preset("osediff")
    params = _params(deg, [0])
    with pytest.raises(ValueError, match="multiple of the scale"):
        deg.apply(_gt(1, 66, 80), params)
    with pytest.raises(ValueError, match="leading dim"):
        deg.apply(_gt(2), params)
    with pytest.raises(ValueError):
        RealESRGANDegradation(kernel_list=["box"], kernel_prob=[1.0])
    with pytest.raises(ValueError):
        BicubicDegradation(jpeg_quality=(50, 120))
    with pytest.raises(KeyError):
        load_preset("bicubic", not_an_argument=1)
