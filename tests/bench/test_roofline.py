"""experiments/bench/roofline.py: its FLOPs agree with the FLOP counter, its time bounds hold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "bench"))
import roofline  # noqa: E402
import train_memory  # noqa: E402


def test_train_roofline_counts_the_flops_and_bounds_the_time():
    """Same FLOPs as torch's FLOP counter, at least FLOPs / peak, the two parts add up, views left out."""
    row = roofline.train_roofline("paper", 1, 64)
    flops = train_memory.flops("paper", 1, 64)
    assert row["tflop"] == pytest.approx(flops["step_tflop"], rel=0.01)
    assert row["roofline_ms"] >= 1e3 * row["tflop"] * 1e12 / roofline.H200["half_flops"]
    assert row["roofline_ms"] == pytest.approx(row["flop_bound_ms"] + row["bandwidth_bound_ms"], rel=1e-3)
    assert 1000 < row["kernels"] and "convolution" in row["top_ops_ms"]


@pytest.mark.slow
def test_inference_roofline_sees_the_three_networks():
    """Per image, the pipeline's FLOPs are the VAE encoder + UNet + decoder at that size (LRRB, LFIM and the
    colour fix add little), and batching does not change the per-image FLOPs."""
    one, two = roofline.inference_roofline(1, 32), roofline.inference_roofline(2, 32)
    parts = train_memory.flops("bf16", 1, 128)["forward_tflop_per_image"]
    networks = parts["vae_encoder"] + parts["unet"] + parts["vae_decoder"]
    assert one["tflop"] == pytest.approx(networks, rel=0.05) and two["tflop"] == pytest.approx(
        one["tflop"], rel=1e-3
    )
    assert one["roofline_ms"] >= 1e3 * one["tflop"] * 1e12 / roofline.H200["half_flops"]
