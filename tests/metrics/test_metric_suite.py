"""MetricSuite: protocol options, SSIM implementation, per-image state, batching, validation, DDP rows."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from fidesr import weights as W
from fidesr.metrics import NA_WEIGHTS, MetricSuite, SeparableSSIM
from fidesr.protocol import ProtocolOptions
from fidesr.weights import WeightsMissingError


def _pyiqa(name: str, **opts: object) -> torch.nn.Module:
    """pyiqa's own metric, its files read from the test's weights directory ($FIDESR_WEIGHTS_DIR)."""
    with W.torch_cache_scope():
        return W.import_pyiqa().create_metric(name, device="cpu", **opts)


@pytest.mark.parametrize(
    "opts",
    [
        dict(test_y_channel=True, color_space="ycbcr", crop_border=0),
        dict(test_y_channel=False, color_space="ycbcr", crop_border=0),
        dict(test_y_channel=True, color_space="yiq", crop_border=4),
    ],
    ids=["protocol", "rgb", "yiq-crop4"],
)
def test_separable_ssim_equals_pyiqa(image_pair: tuple[torch.Tensor, torch.Tensor], opts: dict) -> None:
    sr, gt = image_pair
    ours = SeparableSSIM(**opts)(sr, gt)
    ref = _pyiqa("ssim", **opts)(sr, gt).double()
    # pyiqa rounds its 2-D window to float32; ours is exact
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_protocol_psnr_is_pyiqa_ycbcr_not_default(image_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    sr, gt = image_pair
    suite = MetricSuite(["psnr", "ssim"])
    s = suite.score(sr, gt)
    torch.testing.assert_close(
        s["psnr"], _pyiqa("psnr", test_y_channel=True, color_space="ycbcr")(sr, gt).double()
    )
    yiq = _pyiqa("psnr", test_y_channel=True)(sr, gt).double()  # pyiqa's default Y: a different number
    assert (s["psnr"] - yiq).abs().max() > 1e-3
    rgb = MetricSuite(["psnr", "ssim"], ProtocolOptions(test_y_channel=False, crop_border=4)).score(sr, gt)
    ref = _pyiqa("psnr", test_y_channel=False, crop_border=4)(sr, gt).double()
    torch.testing.assert_close(rgb["psnr"], ref)
    assert not torch.allclose(rgb["ssim"], s["ssim"])


def test_pyiqa_ssim_impl_selectable(image_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    sr, gt = image_pair
    a = MetricSuite(["ssim"], ProtocolOptions(ssim_impl="pyiqa")).score(sr, gt)["ssim"]
    b = MetricSuite(["ssim"]).score(sr, gt)["ssim"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_update_compute_reset_and_batching(make_pair: object) -> None:
    sr, gt = make_pair(64, n=4)
    suite = MetricSuite(["psnr", "ssim"], device="auto")
    assert suite.device.type in ("cpu", "cuda")
    rows = suite.update(sr, gt, names=["a", "b", "c", "d"])
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"] and set(rows[0]) == {"name", "psnr", "ssim"}
    single = MetricSuite(["psnr", "ssim"])
    for i, n in enumerate("abcd"):
        single.update(sr[i : i + 1], gt[i : i + 1], [n])
    for r1, r2 in zip(suite.per_image, single.per_image, strict=True):
        assert r1["psnr"] == pytest.approx(r2["psnr"], abs=1e-4) and r1["ssim"] == pytest.approx(
            r2["ssim"], abs=1e-12
        )
    means = suite.compute()
    assert means["psnr"] == pytest.approx(sum(r["psnr"] for r in rows) / 4)
    suite.update(sr[:1], gt[:1])  # unnamed images get generated names
    assert suite.per_image[-1]["name"] == "img_000004"
    suite.reset()
    assert suite.per_image == [] and math.isnan(suite.compute()["psnr"])


def test_identical_images_hit_the_metric_bounds(make_pair: object) -> None:
    _, gt = make_pair(64)
    s = MetricSuite(["psnr", "ssim"]).score(gt, gt)
    assert torch.all(s["ssim"] > 1 - 1e-12)
    assert torch.all(s["psnr"] > 75)  # pyiqa: 10 log10(1 / (0 + 1e-8)) = 80 dB


def test_summarize_drops_sampler_duplicates() -> None:
    # Two DDP ranks; DistributedSampler padded rank 1 with a repeat of image "a".
    rank0 = [{"name": "a", "psnr": 20.0}, {"name": "b", "psnr": 30.0}]
    rank1 = [{"name": "c", "psnr": 40.0}, {"name": "a", "psnr": 20.0}]
    assert MetricSuite.summarize(rank0 + rank1, ["psnr"]) == {"psnr": 30.0}
    suite = MetricSuite(["psnr"])
    suite.load_rows(rank0 + rank1)
    assert suite.compute() == {"psnr": 30.0}


def test_input_checks(make_pair: object) -> None:
    sr, gt = make_pair(32)
    suite = MetricSuite(["psnr"])
    with pytest.raises(ValueError, match=r"\[-1,1\] image"):
        suite.score(sr * 2 - 1, gt)
    with pytest.raises(ValueError, match="full-reference"):
        suite.score(sr)
    with pytest.raises(ValueError, match="differ in shape"):
        suite.score(sr, gt[..., :16])
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        suite.score(sr[:, :1], gt[:, :1])
    with pytest.raises(ValueError, match="names for a batch"):
        suite.update(sr, gt, names=["only-one"])
    assert suite.score(sr, allow_missing_gt=True) == {}  # a set without GT: full-reference left out
    # tiny excursions (resampling overshoot) are clamped, not rejected
    suite.score((sr + 5e-4).clamp(max=1 + 5e-4), gt)


def test_required_missing_fails_optional_is_skipped(weights_dir: Path, make_pair: object) -> None:
    with pytest.raises(WeightsMissingError, match="LPIPS_v0.1_alex-df73285e.pth"):
        MetricSuite(["psnr", "lpips"], required=["lpips"])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        suite = MetricSuite(["psnr", "lpips", "fid", "niqe"], required=["psnr"])
    assert suite.names == ["psnr", "lpips", "fid", "niqe"] and suite.active == ["psnr"]
    assert suite.skipped == {"lpips": NA_WEIGHTS, "fid": NA_WEIGHTS, "niqe": NA_WEIGHTS}
    assert not suite.has_fid and suite.format("lpips", None) == "n/a (weights missing)"
    sr, gt = make_pair(32)
    suite.update(sr, gt)
    assert set(suite.compute()) == {"psnr"}
    with pytest.raises(RuntimeError, match="FID is not available"):
        suite.fid(weights_dir, weights_dir)


def test_conf_mapping_form(make_pair: object) -> None:
    suite = MetricSuite({"psnr": {"required": True, "crop_border": 2}, "ssim": None})
    sr, gt = make_pair(32)
    ref = _pyiqa("psnr", test_y_channel=True, color_space="ycbcr", crop_border=2)(sr, gt).double()
    torch.testing.assert_close(suite.score(sr, gt)["psnr"], ref)


def test_niqe_through_the_suite_matches_pyiqa(niqe_weights: Path, image_pair: tuple) -> None:
    sr, _ = image_pair
    suite = MetricSuite(["niqe"], weights_dir=niqe_weights)
    assert suite.active == ["niqe"]
    ref = _pyiqa("niqe")(sr).double().flatten()
    torch.testing.assert_close(suite.score(sr)["niqe"], ref)
