"""DAW: detail map, error map, percentile normalisation, weights and schedule.

References here are independent numpy re-implementations (explicit shifted sums over an edge-padded
array, ``np.percentile``, explicit bilinear sampling) in float64, compared to the float32 torch code.
"""

from __future__ import annotations

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy_reference import (
    BOX,
    LAP,
    SOBEL_X,
    SOBEL_Y,
    np_detail,
    np_filt,
    np_pnorm,
    np_resize_bilinear,
    to_torch,
)

from fidesr.components import daw


# ----------------------------------------------------------------------------- numpy reference
def np_error(pred: np.ndarray, gt: np.ndarray, perc: np.ndarray, p: float) -> np.ndarray:
    """pred, gt [3,H,W]; perc [h,w] -> [H,W]. p is the perceptual share."""
    a = np.abs(pred - gt)
    e_pix = 0.8 * a.mean(0) + 0.2 * a.std(0, ddof=1)
    e_perc = np_resize_bilinear(perc, *gt.shape[-2:])
    return np_pnorm((1 - p) * e_pix + p * e_perc)


def np_weights(d: np.ndarray, e: np.ndarray, alpha: float, alpha_lf: float = 0.0, lf_smooth: int = 1):
    def scn(w):
        wb = np_filt(w, BOX)
        wb = wb / (wb.mean() + 1e-6)
        return 2.0 * np.tanh(wb / 2.0)  # the paper's bound, i.e. wmax = 2

    w = np.ones_like(e)
    if alpha > 0:
        w = w + alpha * scn(d * e)
    if alpha_lf > 0:
        ds = d
        for _ in range(lf_smooth):
            ds = np_filt(ds, BOX)
        w = w + alpha_lf * scn(np.clip(1 - ds, 0, 1) * e)
    return w / (w.mean() + 1e-8)


def rand_images(seed: int, b: int = 2, h: int = 40, w: int = 36) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth + noisy content so all three detail terms matter; float32-representable values.
    base = rng.uniform(-1, 1, size=(b, 3, h, w))
    return base.astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- filters
def test_conv3x3_replicate_matches_kornia_filter2d():
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    kernels = torch.tensor(np.stack([SOBEL_X, SOBEL_Y, LAP, BOX]), dtype=torch.float32)
    out = daw.conv3x3_replicate(x, kernels)
    for c in range(3):
        for k in range(4):
            ref = kornia.filters.filter2d(x[:, c : c + 1], kernels[k : k + 1], border_type="replicate")
            torch.testing.assert_close(out[:, c * 4 + k : c * 4 + k + 1], ref, atol=1e-6, rtol=0)


def test_box3_matches_numpy():
    x = np.random.default_rng(1).normal(size=(7, 9))
    torch.testing.assert_close(
        daw.box3(to_torch(x)[None, None])[0, 0], to_torch(np_filt(x, BOX)), atol=1e-6, rtol=0
    )


def test_grey_weights_by_hand():
    img = torch.zeros(1, 3, 1, 3)
    img[0, 0, 0, 0] = 1.0  # pure red
    img[0, 1, 0, 1] = 1.0  # pure green
    img[0, 2, 0, 2] = 1.0  # pure blue
    torch.testing.assert_close(daw.to_grey(img)[0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))
    with pytest.raises(ValueError):
        daw.to_grey(torch.zeros(1, 2, 3, 3))


# ----------------------------------------------------------------------------- detail map
def test_detail_terms_step_edge_by_hand():
    """4x4 grey image with columns [0, 0, 1, 1]: Sobel, |Laplacian| and variance worked out by hand."""
    g = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(4, 1)[None, None]
    sobel, lap, var = daw.detail_terms(g)
    row = lambda *v: torch.tensor(v).repeat(4, 1)[None, None]  # noqa: E731
    # gx at col 1: (1 - 0) * (1 + 2 + 1) = 4; col 2 likewise; borders replicate -> flat -> 0. gy = 0.
    torch.testing.assert_close(sobel, row(0.0, 4.0, 4.0, 0.0))
    # lap at col 1: 0 + 0 + 0 + 1 - 0 = 1; col 2: 1 + 1 + 0 + 1 - 4 = -1 -> 1.
    torch.testing.assert_close(lap, row(0.0, 1.0, 1.0, 0.0))
    # box3 mean = [0, 1/3, 2/3, 1]; (g - mean)^2 = [0, 1/9, 1/9, 0]; box3 of that = [1, 2, 2, 1] / 27.
    torch.testing.assert_close(var, row(1 / 27, 2 / 27, 2 / 27, 1 / 27))


def test_detail_map_step_edge_by_hand():
    g = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(4, 1)[None, None]
    # D = [1/81, 137/81, 137/81, 1/81] per row; over 16 pixels q05 = 1/81 (pos 0.75 between equal
    # values) and q95 = 137/81, so pnorm = [0, nb, nb, 0] with nb = (136/81) / (136/81 + 1e-6), then box3.
    nb = (136 / 81) / (136 / 81 + 1e-6)
    expected = torch.tensor([nb / 3, 2 * nb / 3, 2 * nb / 3, nb / 3]).repeat(4, 1)[None, None]
    torch.testing.assert_close(daw.detail_map(g), expected, atol=1e-6, rtol=0)


def test_detail_map_matches_numpy_random():
    x = rand_images(2)
    out = daw.detail_map(to_torch(x))
    assert out.shape == (2, 1, 40, 36) and out.dtype == torch.float32
    for i in range(2):
        torch.testing.assert_close(out[i, 0], to_torch(np_detail(x[i])), atol=1e-5, rtol=0)


def test_detail_map_matches_numpy_realsr(realsr_gt):
    x = realsr_gt * 2 - 1  # training passes the GT in [-1, 1]
    out = daw.detail_map(to_torch(x))
    for i in range(len(x)):
        torch.testing.assert_close(out[i, 0], to_torch(np_detail(x[i])), atol=1e-5, rtol=0)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_detail_map_is_range_sensitive():
    """The map is computed on the image as given: [-1, 1] and [0, 1] inputs differ (variance term)."""
    x = to_torch(rand_images(3))
    assert not torch.allclose(daw.detail_map(x), daw.detail_map(x * 0.5 + 0.5), atol=1e-4)


def test_detail_map_no_grad():
    x = to_torch(rand_images(4)).requires_grad_(True)
    assert not daw.detail_map(x).requires_grad


# ----------------------------------------------------------------------------- percentile norm
def test_percentile_normalize_matches_numpy_per_image():
    x = torch.randn(3, 2, 17, 19, generator=torch.Generator().manual_seed(5)).double().float()
    out = daw.percentile_normalize(x)
    for i in range(3):
        ref = np_pnorm(x[i].double().numpy())
        torch.testing.assert_close(out[i], to_torch(ref), atol=1e-6, rtol=0)
    assert out.min() == 0.0 and out.max() == 1.0


def test_percentile_normalize_dtype_and_bounds():
    x = torch.randn(2, 1, 8, 8).half()
    out = daw.percentile_normalize(x, lo=0.1, hi=0.9)
    assert out.dtype == torch.float16 and out.min() >= 0 and out.max() <= 1
    # a constant image maps to 0 (eps in the denominator), not NaN
    assert torch.equal(daw.percentile_normalize(torch.ones(1, 1, 4, 4)), torch.zeros(1, 1, 4, 4))


# ----------------------------------------------------------------------------- error map
@pytest.mark.parametrize("p", [0.0, 0.5, 0.8, 1.0])
def test_error_map_matches_numpy(p):
    rng = np.random.default_rng(6)
    pred, gt = rand_images(7), rand_images(8)
    perc = rng.uniform(0, 1, size=(2, 1, 10, 9)).astype(np.float32).astype(np.float64)  # coarser map
    out = daw.error_map(to_torch(pred), to_torch(gt), to_torch(perc), p=p)
    assert out.shape == (2, 1, 40, 36)
    for i in range(2):
        torch.testing.assert_close(
            out[i, 0], to_torch(np_error(pred[i], gt[i], perc[i, 0], p)), atol=1e-5, rtol=0
        )


def test_error_map_p_is_perceptual_share():
    pred, gt = to_torch(rand_images(9)), to_torch(rand_images(10))
    perc = torch.rand(2, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(daw.error_map(pred, gt, perc, p=1.0), daw.percentile_normalize(perc))
    a = (pred - gt).abs()
    e_pix = 0.8 * a.mean(1, keepdim=True) + 0.2 * a.std(1, keepdim=True)
    torch.testing.assert_close(daw.error_map(pred, gt, perc, p=0.0), daw.percentile_normalize(e_pix))
    torch.testing.assert_close(daw.error_map(pred, gt, None, p=0.0), daw.percentile_normalize(e_pix))
    with pytest.raises(ValueError):
        daw.error_map(pred, gt, None, p=0.5)


def test_error_map_accepts_scalar_lpips():
    pred, gt = to_torch(rand_images(11)), to_torch(rand_images(12))
    scalar = torch.tensor([0.3, 0.7])
    a = daw.error_map(pred, gt, scalar, p=0.5)
    b = daw.error_map(pred, gt, scalar.view(2, 1, 1, 1).expand(2, 1, 40, 36), p=0.5)
    torch.testing.assert_close(a, b)


def test_error_map_matches_numpy_realsr(realsr_gt, realsr_osediff):
    gt, sr = realsr_gt * 2 - 1, realsr_osediff * 2 - 1
    perc = np.abs(sr - gt).mean(1, keepdims=True)[:, :, ::16, ::16]  # a stand-in 32x32 "LPIPS" map
    out = daw.error_map(to_torch(sr), to_torch(gt), to_torch(perc), p=0.5)
    for i in range(len(gt)):
        torch.testing.assert_close(
            out[i, 0], to_torch(np_error(sr[i], gt[i], perc[i, 0], 0.5)), atol=1e-5, rtol=0
        )


# ----------------------------------------------------------------------------- weights
def test_resize_weights_matches_numpy_bilinear():
    w = np.random.default_rng(13).uniform(0.5, 2, size=(2, 1, 32, 24))
    out = daw.resize_weights(to_torch(w), (8, 6))
    for i in range(2):
        torch.testing.assert_close(out[i, 0], to_torch(np_resize_bilinear(w[i, 0], 8, 6)), atol=1e-5, rtol=0)
    up = daw.resize_weights(to_torch(w), (40, 30))
    torch.testing.assert_close(up[1, 0], to_torch(np_resize_bilinear(w[1, 0], 40, 30)), atol=1e-5, rtol=0)
    same = to_torch(w)
    assert daw.resize_weights(same, (32, 24)) is same


@pytest.mark.parametrize(("alpha", "alpha_lf", "lf_smooth"), [(0.6, 0.0, 1), (0.3, 0.0, 1), (0.6, 0.4, 2)])
def test_daw_weights_match_numpy(alpha, alpha_lf, lf_smooth):
    rng = np.random.default_rng(14)
    d = rng.uniform(0, 1, size=(2, 1, 24, 20)).astype(np.float32).astype(np.float64)
    e = rng.uniform(0, 1, size=(2, 1, 24, 20)).astype(np.float32).astype(np.float64)
    out = daw.daw_weights(to_torch(d), to_torch(e), alpha, 2.0, alpha_lf, lf_smooth)
    for i in range(2):
        ref = np_weights(d[i, 0], e[i, 0], alpha, alpha_lf, lf_smooth)
        torch.testing.assert_close(out[i, 0], to_torch(ref), atol=1e-5, rtol=0)


def test_soft_clip_bound_is_wmax():
    w = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) ** 8  # very peaky
    for wmax in (1.0, 2.0, 4.0):
        s = daw.soft_clip_normalize(w, wmax)
        assert s.min() >= 0 and s.max() < wmax


def test_weights_mean_one_and_schedule():
    m = daw.DetailAwareWeighting()
    assert [m.alpha_at(s) for s in (0, 1000, 1999, 2000)] == [0.0, 0.0, 0.0, 0.0]
    assert m.alpha_at(2500) == pytest.approx(0.3)
    assert m.alpha_at(3000) == pytest.approx(0.6)
    assert m.alpha_at(10**6) == pytest.approx(0.6)
    assert m.alpha_at(2250) == pytest.approx(0.15)
    g = torch.Generator().manual_seed(15)
    d, e = torch.rand(3, 1, 20, 20, generator=g), torch.rand(3, 1, 20, 20, generator=g)
    assert m.weights(d, e, 1999) is None and m.weights(d, e, 2000) is None  # alpha 0 -> plain losses
    for step in (2001, 2500, 3000, 50_000):
        w = m.weights(d, e, step)
        assert w is not None and w.shape == (3, 1, 20, 20)
        torch.testing.assert_close(w.mean(dim=(2, 3)), torch.ones(3, 1), atol=1e-6, rtol=0)
        assert (w > 0).all()
    torch.testing.assert_close(m.weights(d, e, 2500), daw.daw_weights(d, e, 0.3))


def test_schedule_without_ramp_and_lf_term():
    m = daw.DetailAwareWeighting(alpha=0.0, alpha_lf=0.5, warmup_steps=10, ramp_steps=0)
    assert m.alpha_at(10) == 0.0 and m.alpha_lf_at(9) == 0.0 and m.alpha_lf_at(10) == 0.5
    d, e = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(m.weights(d, e, 10), daw.daw_weights(d, e, 0.0, alpha_lf=0.5))


def test_module_forward_composes_functions():
    pred, gt = to_torch(rand_images(16)), to_torch(rand_images(17))
    perc = torch.rand(2, 1, 10, 9, generator=torch.Generator().manual_seed(1))
    m = daw.DetailAwareWeighting(p=0.5)
    assert m(pred, gt, perc, step=100) is None
    w = m(pred.requires_grad_(True), gt, perc, step=2600)
    ref = daw.daw_weights(daw.detail_map(gt), daw.error_map(pred, gt, perc, 0.5), m.alpha_at(2600))
    torch.testing.assert_close(w, ref)
    assert not w.requires_grad


@pytest.mark.parametrize("p", [0.0, 0.2, 1.0])
def test_module_call_honours_p_against_numpy(p):
    """The module call is DAW's one entry point (training step and image callback); its weights at p != 0.5
    equal the numpy composition detail x error(p) -> weights."""
    pred, gt = rand_images(21), rand_images(22)
    perc = np.random.default_rng(23).uniform(0, 1, size=(2, 1, 10, 9)).astype(np.float32).astype(np.float64)
    m = daw.DetailAwareWeighting(p=p, warmup_steps=0, ramp_steps=0)
    w = m(to_torch(pred), to_torch(gt), to_torch(perc), step=5)
    for i in range(2):
        ref = np_weights(np_detail(gt[i]), np_error(pred[i], gt[i], perc[i, 0], p), 0.6)
        torch.testing.assert_close(w[i, 0], to_torch(ref), atol=1e-5, rtol=0)


def test_weighted_mean():
    g = torch.Generator().manual_seed(18)
    se = torch.rand(2, 3, 16, 16, generator=g)
    w = daw.daw_weights(torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g), 0.6)
    torch.testing.assert_close(daw.weighted_mean(se, None), se.mean())
    torch.testing.assert_close(daw.weighted_mean(se, w), (w * se).mean())
    lp = torch.rand(2, 1, 8, 8, generator=g)
    torch.testing.assert_close(
        daw.weighted_mean(lp, w), (F.interpolate(w, size=(8, 8), mode="bilinear") * lp).mean()
    )
    scalar = torch.rand(2, 1, 1, 1, generator=g)
    torch.testing.assert_close(daw.weighted_mean(scalar, w), (w.mean((2, 3), keepdim=True) * scalar).mean())


def test_invalid_arguments():
    with pytest.raises(ValueError):
        daw.DetailAwareWeighting(p=1.5)
    with pytest.raises(ValueError):
        daw.DetailAwareWeighting(wmax=0)
    with pytest.raises(ValueError):
        daw.DetailAwareWeighting(alpha=-0.1)
