"""The GPU benchmark scripts stay runnable: their ``--tiny --device cpu`` mode runs the same code paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "experiments" / "bench"


def _run(script: str, out: Path, cache_dir: Path, *extra: str) -> list[dict]:
    env = {**os.environ, "FIDESR_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--tiny", "--device", "cpu", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_inference_bench_tiny_cpu(tiny_backbone_folder: Path, cache_dir: Path, tmp_path: Path) -> None:
    rows = {r["name"]: r for r in _run("inference.py", tmp_path / "inf.jsonl", cache_dir)}
    assert rows["env"]["tiny"] is True
    for name in (
        "diffusers bf16 eager, OSEDiff-style baseline",
        "fidesr bf16 eager",
        "fidesr tiled 64->256 px",
    ):
        assert rows[name]["ms_per_image"] > 0 and rows[name]["peak_rss_gib"] > 0, rows[name]
    assert not [r for r in rows.values() if "error" in r]


@pytest.mark.slow
@pytest.mark.parametrize("configs", [["paper", "24gib"]])
def test_train_step_bench_tiny_cpu(
    tiny_backbone_folder: Path, cache_dir: Path, tmp_path: Path, configs: list[str]
) -> None:
    rows = _run("train_step.py", tmp_path / "train.jsonl", cache_dir, "--configs", *configs)
    steps = [r for r in rows if r["name"].startswith("train step")]
    assert [r["name"] for r in steps] == [f"train step {c}" for c in configs]
    assert all(r["s_per_call"] > 0 for r in steps), steps
