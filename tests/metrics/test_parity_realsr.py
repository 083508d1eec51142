"""Regression target of the project: ``fidesr-eval`` folder mode on RealSR reproduces OSEDiff's own
metric log (pyiqa 0.1.10) for its released outputs: PSNR within 1e-4 and SSIM within 1e-5 per image,
NIQE within 0.03 per image and 2e-3 on the mean, on all 100 images.

NIQE's parameters come from ../shared/weights/niqe_pris_params.npz through ``adopt`` (the code behind
``fidesr-weights install --from``) into a temporary weights directory.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from _metrics_shared import NIQE_NPZ, REALSR, needs_niqe_npz, needs_realsr
from fidesr import weights as W
from fidesr.cli.eval import run
from fidesr.metrics.tables import read_csv

_LINE = re.compile(r"results_osediff/(\S+) \| PSNR: ([\d.]+); SSIM: ([\d.]+);.*NIQE: ([\d.]+);")
_MEAN = re.compile(r"^PSNR: ([\d.]+); SSIM: ([\d.]+);.*NIQE: ([\d.]+);")  # the averages line


def parse_osediff_log(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-image {name: {psnr, ssim, niqe}} and the logged averages (4 decimals) of test_metrics.py."""
    per_image, mean = {}, {}
    for line in path.read_text().splitlines():
        if m := _LINE.search(line):
            per_image[m[1]] = {"psnr": float(m[2]), "ssim": float(m[3]), "niqe": float(m[4])}
        elif m := _MEAN.search(line):
            mean = {"psnr": float(m[1]), "ssim": float(m[2]), "niqe": float(m[3])}
    return per_image, mean


@needs_realsr
@needs_niqe_npz
def test_realsr_folder_mode_reproduces_osediff_log(tmp_path: Path, weights_dir: Path) -> None:
    W.adopt([NIQE_NPZ], weights_dir, log=lambda _: None)
    log_rows, log_mean = parse_osediff_log(REALSR / "osediff_metrics.log")
    assert len(log_rows) == 100 and log_mean["niqe"] == 5.6476

    with initialize_config_module(config_module="fidesr.conf", version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"sr_dir={REALSR / 'osediff'}",
                f"gt_dir={REALSR / 'gt'}",
                "metrics=[psnr,ssim,niqe]",
                f"output_dir={tmp_path / 'eval'}",
                f"weights_dir={weights_dir}",
                "device=cpu",
                "num_workers=0",
                "progress=false",
            ],
        )
    t0 = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - t0

    ours = {r["name"]: r for r in read_csv(tmp_path / "eval" / "per_image.csv")}
    assert set(ours) == set(log_rows)
    diff = {m: {n: abs(ours[n][m] - log_rows[n][m]) for n in ours} for m in ("psnr", "ssim", "niqe")}
    worst = {m: max(d.items(), key=lambda kv: kv[1]) for m, d in diff.items()}
    log_niqe_mean = sum(r["niqe"] for r in log_rows.values()) / 100
    mean_diff = abs(result.summary["niqe"] - log_niqe_mean)
    print(
        f"\nRealSR parity, 100 pairs, PSNR+SSIM+NIQE: {seconds:.1f} s "
        + "; ".join(f"max |d{m}| {v:.2e} ({n})" for m, (n, v) in worst.items())
        + f"; |d mean NIQE| {mean_diff:.2e}"
    )

    assert worst["psnr"][1] < 1e-4
    assert worst["ssim"][1] < 1e-5
    assert worst["niqe"][1] < 0.03
    assert mean_diff < 2e-3
    for m in ("psnr", "ssim", "niqe"):  # and the averages as the log prints them (4 decimals)
        assert abs(result.summary[m] - log_mean[m]) < (2e-3 if m == "niqe" else 1e-4)
