"""fidesr-report on synthetic sweep folders the tests write (job folders as fidesr-train / fidesr-eval
multiruns leave them, per-image tables and images included): rows, mean +- std, paired differences with
intervals and the "best" rule, failures, provenance warnings, paper rows, plots, the visual comparison,
the LFIM mode and the W&B upload (offline)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from fidesr.cli.report import main
from fidesr.metrics.images import save_image
from fidesr.metrics.published import ABLATION_DAW_LRRB
from fidesr.metrics.tables import read_csv, write_csv
from fidesr.report.jobs import one_line, parse_override
from fidesr.runinfo import config_hash, write_run_info

DAW = {"_target_": "fidesr.components.daw.DetailAwareWeighting", "alpha": 0.6}
LRRB = {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock", "mid_channels": 64}


def make_config(daw: str, lrrb: str, seed: int, **extra: Any) -> dict[str, Any]:
    """A job config shaped like the train app's (interpolations kept, as in .hydra/config.yaml)."""
    return {
        "task_name": "ablation",
        "seed": seed,
        "paths": {"output_dir": "/runs/${now:%H-%M-%S-%f}"},
        "daw": DAW if daw == "on" else None,
        "lrrb": LRRB if lrrb == "on" else None,
        "model": {"daw": "${daw}", "lrrb": "${lrrb}", "seed": "${seed}", "lr": extra.pop("lr", 1e-3)},
        "callbacks": {"ckpt": {"dirpath": "${paths.output_dir}/checkpoints"}},
        **extra,
    }


IMAGES = ("a", "b", "c", "d")
#: Per-image offsets around the job's mean (they sum to zero): the image-to-image spread the pairing removes.
OFFSETS = (-0.3, -0.1, 0.1, 0.3)


def write_images(job: Path, step: int, level: float) -> None:
    """val/gt, val/lq (x4 smaller) and the SR images of the last validation, 16 px; SR = GT + ``level``
    in the left half (so configurations differ there)."""
    for i, name in enumerate(IMAGES):
        gt = torch.linspace(0, 1, 16 * 16).reshape(1, 16, 16).expand(3, -1, -1) * (0.5 + 0.1 * i)
        sr = gt.clone()
        sr[:, :, :8] = (sr[:, :, :8] + level).clamp(0, 1)
        save_image(gt, job / "val" / "gt" / "demo" / f"{name}.png")
        save_image(gt[:, ::4, ::4], job / "val" / "lq" / "demo" / f"{name}.png")
        save_image(sr, job / "val" / f"step_{step}" / "demo" / f"{name}.png")


def make_job(
    sweep: Path,
    num: int,
    overrides: Sequence[str],
    metrics: Mapping[str, float] | None,
    config: Mapping[str, Any],
    *,
    status: str = "completed",
    commit: str = "a" * 40,
    error: str | None = None,
    losses: Mapping[str, Sequence[float]] | None = None,
    name: str | None = None,
    noise: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    images: bool = False,
) -> Path:
    """One job folder: .hydra/{config,overrides}.yaml, metrics.csv (2 validations), the per-image table of
    the last one (value + OFFSETS + ``noise`` per image, so the mean is ``metrics`` when noise sums to 0),
    optionally its images, csv/metrics.csv, run_info.json."""
    job = sweep / (name or f"{num}_{','.join(overrides)}")
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(dict(config)), job / ".hydra" / "config.yaml")
    if metrics is not None:
        first = {m: v * 0.9 for m, v in metrics.items()}
        rows = [
            {"step": 0, "epoch": 0, "set": "demo", "images": 4, **first},
            {"step": 10, "epoch": 0, "set": "demo", "images": 4, **metrics},
        ]
        write_csv(job / "metrics.csv", rows, ["step", "epoch", "set", "images", *metrics])
        per_image = [
            {"name": n, **{m: v + o * abs(v) * 0.1 + e for m, v in metrics.items()}}
            for n, o, e in zip(IMAGES, OFFSETS, noise, strict=True)
        ]
        write_csv(job / "val" / "step_10" / "demo" / "per_image.csv", per_image, ["name", *metrics])
        if images:
            write_images(job, 10, metrics.get("psnr", 20.0) / 100)
    losses = losses or {"train/loss/mse": [0.3, 0.2, 0.1], "train/loss/total": [1.0, 0.8, 0.7]}
    log = [{"step": s, **{k: v[s] for k, v in losses.items()}} for s in range(3)]
    write_csv(job / "csv" / "metrics.csv", log, ["step", *losses])
    write_run_info(
        job,
        {
            "status": status,
            "git_commit": commit,
            "git_dirty": False,
            "code_hash": "c" * 64,
            "source_files": {"fidesr/model.py": "1"},
            "package_version": "0.1.0",
            "config_hash": config_hash(OmegaConf.create(dict(config))),
            "seed": config.get("seed"),
            "sweep_id": f"ablation_{sweep.name}",
            "error": error,
        },
    )
    if error:
        (job / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return job


SWITCHES = [("on", "on"), ("on", "off"), ("off", "on"), ("off", "off")]


def make_sweep(root: Path, seeds: Sequence[int] = (0, 1), **job_kwargs: Any) -> Path:
    """4 configurations x seeds; PSNR/SSIM/LPIPS/MUSIQ with known means, LRRB=on,DAW=on best."""
    sweep = root / "multirun_2026-01-01_00-00-00-000000"
    num = 0
    for daw, lrrb in SWITCHES:
        for seed in seeds:
            bonus = (daw == "on") + 2 * (lrrb == "on")
            metrics = {
                "psnr": 20.0 + bonus + seed,
                "ssim": 0.5 + 0.01 * bonus,
                "lpips": 0.4 - 0.01 * bonus,
                "musiq": 50.0 + bonus,
            }
            make_job(
                sweep,
                num,
                [f"daw={daw}", f"lrrb={lrrb}", f"seed={seed}", "trainer.max_steps=10"],
                metrics,
                make_config(daw, lrrb, seed),
                **job_kwargs,
            )
            num += 1
    return sweep


def table(sweep: Path, name: str = "ablation.csv") -> list[dict[str, Any]]:
    return read_csv(sweep / name)


def test_parse_override_and_one_line() -> None:
    assert parse_override("+model.lr=1e-4") == ("model.lr", "1e-4")
    assert parse_override("daw@x=on") == ("daw", "on")
    assert one_line("a\n  b\n c", limit=100) == "a b c"
    assert one_line("x" * 50, limit=10).endswith("…")


def test_ablation_table_paired_differences_best_and_plots(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, images=True)
    assert main([str(sweep), "--wandb", "off", "--resamples", "2000"]) == 0
    rows = table(sweep)
    assert [r["configuration"] for r in rows] == [
        "daw=on,lrrb=on",
        "daw=on,lrrb=off",
        "daw=off,lrrb=on",
        "daw=off,lrrb=off",
    ]
    best, base = rows[0], rows[3]
    assert best["n_seeds"] == 2 and best["seeds"] == "0 1" and best["step"] == 10 and best["n_images"] == 4
    assert best["psnr"] == pytest.approx(23.5) and best["psnr_std"] == pytest.approx(math.sqrt(0.5))
    assert best["lpips"] == pytest.approx(0.37)
    # Paired on (seed, image) against the all-off baseline: +3 dB, the interval tight around it.
    assert best["baseline"] == "daw=off,lrrb=off" and base["psnr_delta"] == 0
    assert (
        best["psnr_delta"] == pytest.approx(3.0)
        and 2.9 < best["psnr_ci_low"] <= 3.0 <= best["psnr_ci_high"] < 3.1
    )
    assert best["lpips_delta"] == pytest.approx(-0.03) and best["lpips_ci_high"] < 0
    for r in rows:
        for m in ("psnr", "ssim", "lpips", "musiq"):
            assert r[f"{m}_ci_low"] <= r[f"{m}_delta"] <= r[f"{m}_ci_high"], (r["configuration"], m)
    # Every metric's largest improvement (by its direction) is the first configuration, and it is detected.
    assert set(best["best"].split(";")) == {"psnr", "ssim", "lpips", "musiq"}
    assert all(not r["best"] for r in rows[1:])
    assert best["daw"] == "on" and best["lrrb"] == "on" and best["git_commit"] == "a" * 12
    md = (sweep / "ablation.md").read_text()
    assert "23.5000 ± 0.7071" in md and "LPIPS ↓" in md and "PSNR ↑" in md and "Δ PSNR ↑" in md
    assert "- PSNR: best: `daw=on,lrrb=on`, Δ +3 [" in md and "**+3.0000 [" in md
    assert "Warnings" not in md and "Failed" not in md
    for png in ("curves.png", "deltas.png", "perception_distortion.png", "val_curves.png", "comparisons.png"):
        assert (sweep / png).stat().st_size > 1000, png
    assert not (sweep / "bars.png").exists()  # truncated bars are gone
    assert "crops chosen as the 16 px window" in md  # the crop size (32) clamped to the 16 px images


def test_interval_straddling_zero_claims_no_best(tmp_path: Path) -> None:
    """Per-image differences of +-1 around a mean of 0: no difference detected, no best, no bold."""
    sweep = tmp_path / "sw"
    for i, (daw, lrrb) in enumerate(SWITCHES):
        noise = (
            (0.0,) * 4 if lrrb == "off" else (1.0, -1.0, 1.0, -1.0)
        )  # daw=on,lrrb=off: the baseline's values
        make_job(
            sweep,
            i,
            [f"daw={daw}", f"lrrb={lrrb}"],
            {"psnr": 20.0, "ssim": 0.5},
            make_config(daw, lrrb, 0),
            noise=noise,
        )
    assert main([str(sweep), "--wandb", "off", "--resamples", "2000"]) == 0
    rows = table(sweep)
    assert all(not r["best"] for r in rows)
    on = rows[0]
    assert on["psnr_delta"] == pytest.approx(0.0) and on["psnr_ci_low"] < 0 < on["psnr_ci_high"]
    assert on["psnr_p"] == pytest.approx(1.0)
    md = (sweep / "ablation.md").read_text()
    assert (
        "- PSNR: no difference detected at n = 4 images; identical to the baseline on every image: `daw=on,lrrb=off`"
        in md
    )
    assert "**" not in md.split("### Differences")[1]
    assert "| `daw=on,lrrb=off` | 0 (identical per-image values) (p = 1) |" in md


def test_baseline_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path, seeds=(0,))
    assert main([str(sweep), "--wandb", "off", "--baseline", "daw=on,lrrb=on", "--resamples", "500"]) == 0
    rows = table(sweep)
    assert rows[0]["psnr_delta"] == 0 and rows[3]["psnr_delta"] == pytest.approx(-3.0)
    assert set(rows[0]["best"].split(";")) == {"psnr", "ssim", "lpips", "musiq"}  # every other one is worse
    assert "best: the baseline `daw=on,lrrb=on`" in (sweep / "ablation.md").read_text()
    assert main([str(sweep), "--wandb", "off", "--baseline", "daw=maybe"]) == 2
    assert (
        "'daw=maybe' is not a configuration of this sweep; configurations: daw=on,lrrb=on"
        in capsys.readouterr().err
    )


def test_crop_boxes_and_constant_loss_panel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    losses = {"train/loss/csd": [0.0, 0.0, 0.0], "train/loss/total": [1.0, 0.8, 0.7]}
    sweep = make_sweep(tmp_path, seeds=(0,), images=True, losses=losses)
    assert main([str(sweep), "--wandb", "off", "--resamples", "500", "--crop", "b:2,2,8"]) == 0
    md = (sweep / "ablation.md").read_text()
    assert "crops chosen as boxes given on the command line" in md
    assert "Training curves not drawn (constant or empty): train/loss/csd" in md
    assert (sweep / "comparisons.png").stat().st_size > 1000
    assert main([str(sweep), "--wandb", "off", "--crop", "zz:0,0,8"]) == 2
    assert "crop box image(s) ['zz'] not in set 'demo'" in capsys.readouterr().err
    assert main([str(sweep), "--wandb", "off", "--crop", "b:0,0"]) == 2
    assert "expected NAME:X,Y,SIZE" in capsys.readouterr().err


def test_failed_job_listed_and_left_out(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, seeds=(0,))
    make_job(
        sweep,
        4,
        ["daw=on", "lrrb=on", "seed=0", "trainer.max_steps=10", "model.lr=99"],
        None,
        make_config("on", "on", 0),
        status="failed",
        error="ValueError: lr=99 is absurd",
    )
    assert main([str(sweep), "--wandb", "off"]) == 0
    assert main([str(sweep), "--wandb", "off", "--strict"]) == 1
    rows = table(sweep)
    assert len(rows) == 4  # the failed job has no row
    md = (sweep / "ablation.md").read_text()
    assert "## Failed or unfinished jobs" in md
    assert "job 4" in md and "**failed**: ValueError: lr=99 is absurd" in md and "error.txt" in md


def test_provenance_warnings(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    # Another commit for one job; a different config for one seed of a configuration (not a swept key).
    info = json.loads((sweep / "1_daw=on,lrrb=on,seed=1,trainer.max_steps=10" / "run_info.json").read_text())
    info.update(
        git_commit="b" * 40, config_hash="d" * 64, code_hash="e" * 64, source_files={"fidesr/model.py": "2"}
    )
    write_run_info(sweep / "1_daw=on,lrrb=on,seed=1,trainer.max_steps=10", info)
    cfg = make_config("off", "off", 1, lr=5e-5)
    OmegaConf.save(
        OmegaConf.create(cfg),
        sweep / "7_daw=off,lrrb=off,seed=1,trainer.max_steps=10" / ".hydra" / "config.yaml",
    )
    assert main([str(sweep), "--wandb", "off", "--strict"]) == 1
    md = (sweep / "ablation.md").read_text()
    assert "jobs ran different git commits: aaaaaaaaaaaa, bbbbbbbbbbbb" in md
    assert "differing files: fidesr/model.py (changed for job(s) 1)" in md
    assert "seeds of daw=on,lrrb=on ran different configs" in md
    assert "configurations differ in more than the swept keys: model.lr" in md
    row = table(sweep)[0]
    assert row["git_commit"] == "aaaaaaaaaaaa bbbbbbbbbbbb"  # both recorded on the row


def test_config_hash_ignores_seed_and_paths_only() -> None:
    a = OmegaConf.create(make_config("on", "on", 0))
    b = OmegaConf.create({**make_config("on", "on", 7), "paths": {"output_dir": "/elsewhere"}})
    assert config_hash(a) == config_hash(b)  # seed (also via ${seed}) and paths (also via ${paths...})
    assert config_hash(a) != config_hash(OmegaConf.create(make_config("on", "on", 0, lr=1.0)))
    assert config_hash(a) != config_hash(OmegaConf.create(make_config("off", "on", 0)))


def test_paper_rows_in_their_own_table(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, seeds=(0,))
    assert main([str(sweep), "--wandb", "off", "--paper-rows", "--resamples", "500"]) == 0
    assert [r["configuration"] for r in table(sweep)] == [
        "daw=on,lrrb=on",
        "daw=on,lrrb=off",
        "daw=off,lrrb=on",
        "daw=off,lrrb=off",
    ]  # ours only
    paper = {r["configuration"]: r for r in table(sweep, "ablation_paper.csv")}
    both = paper["paper: +DAW +LRRB"]
    assert (
        both["musiq"] == ABLATION_DAW_LRRB[(True, True)].values["musiq"] and both["ours"] == "daw=on,lrrb=on"
    )
    base = ABLATION_DAW_LRRB[(False, False)].values["musiq"]
    assert both["musiq_delta"] == pytest.approx(both["musiq"] - base) and both["source"].startswith(
        "FiDeSR paper"
    )
    md = (sweep / "ablation.md").read_text()
    ours, theirs = md.split("## The paper's ablation")
    assert "paper:" not in ours and "| paper: +DAW +LRRB | `daw=on,lrrb=on` |" in theirs
    assert f"68.29 ({68.29 - base:+.4g})" in theirs and "NIQE ↓" in theirs


def test_no_perceptual_metric_no_scatter(tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    for i, (daw, lrrb) in enumerate(SWITCHES):
        make_job(
            sweep,
            i,
            [f"daw={daw}", f"lrrb={lrrb}"],
            {"psnr": 20.0 + i, "ssim": 0.5},
            make_config(daw, lrrb, 0),
        )
    assert main([str(sweep), "--wandb", "off"]) == 0
    assert not (sweep / "perception_distortion.png").exists()
    assert "No perception-distortion plot" in (sweep / "ablation.md").read_text()
    assert (sweep / "deltas.png").is_file() and (sweep / "curves.png").is_file()


def test_empty_or_missing_sweep(tmp_path: Path) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert main([str(tmp_path)]) == 1


def make_lfim_sweep(root: Path) -> Path:
    """fidesr-eval jobs over lf_scale x hf_scale: fidelity falls, perception rises with the strengths."""
    sweep = root / "lfim"
    num = 0
    for lf in (0.0, 0.2, 0.4):
        for hf in (0.0, 0.2, 0.4):
            job = sweep / f"{num}_lfim.hf_scale={hf},lfim.lf_scale={lf}"
            (job / ".hydra").mkdir(parents=True)
            OmegaConf.save(
                OmegaConf.create([f"lfim.lf_scale={lf}", f"lfim.hf_scale={hf}"]),
                job / ".hydra" / "overrides.yaml",
            )
            OmegaConf.save(
                OmegaConf.create({"checkpoint": "/ckpt/last.ckpt", "lfim": {"lf_scale": lf, "hf_scale": hf}}),
                job / ".hydra" / "config.yaml",
            )
            rows = [
                {
                    "label": "sr",
                    "source": "this evaluation",
                    "images": 4,
                    "psnr": 25 - 2 * lf - hf,
                    "ssim": 0.7 - 0.1 * lf,
                    "musiq": 60 + 10 * lf + 5 * hf,
                    "clipiqa": 0.5 + 0.1 * hf,
                },
                {"label": "FiDeSR (paper)", "source": "paper", "psnr": 26.02},
            ]
            write_csv(
                job / "summary.csv", rows, ["label", "source", "images", "psnr", "ssim", "musiq", "clipiqa"]
            )
            num += 1
    return sweep


def test_lfim_report(tmp_path: Path) -> None:
    sweep = make_lfim_sweep(tmp_path)
    assert main(["--lfim", str(sweep), "--wandb", "off"]) == 0
    rows = table(sweep, "lfim.csv")
    assert len(rows) == 9
    assert (rows[0]["lf_scale"], rows[0]["hf_scale"]) == (0.0, 0.0)
    assert rows[0]["psnr"] == 25 and "psnr" in rows[0]["best"]  # our row, never the published one
    strongest = rows[-1]
    assert (strongest["lf_scale"], strongest["hf_scale"]) == (0.4, 0.4) and "musiq" in strongest["best"]
    assert (sweep / "lfim_tradeoff.png").stat().st_size > 1000
    assert (sweep / "lfim_strength.png").stat().st_size > 1000
    assert "/ckpt/last.ckpt" in (sweep / "lfim.md").read_text()


def test_wandb_table_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path, seeds=(0,), images=True)
    assert main([str(sweep), "--wandb", "on", "--resamples", "500"]) == 0
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The comparison as a table of images: one image column per configuration (plus LQ, bicubic, GT).
    tables = {
        str(p.relative_to(p.parents[1] if p.parent.name != "table" else p.parent)).split("_")[0]: p
        for p in runs[0].rglob("media/table/**/*.table.json")
    }
    assert set(tables) == {"ablation", "comparisons/demo"}
    comp = json.loads(tables["comparisons/demo"].read_text())
    assert comp["columns"][:3] == ["image", "box", "LQ (nearest, x4)"] and len(comp["data"]) == 3
    assert all(
        cell == "Image" for row in comp["data"] for cell in row[2:]
    )  # how wandb 0.31 writes image cells
    assert "W&B: table and plots logged" in (sweep / "ablation.md").read_text()


def test_loop_of_single_runs_is_a_sweep(tmp_path: Path) -> None:
    """A shell loop of single DDP runs into one folder: paths and sweep_id overrides are not configurations."""
    sweep = tmp_path / "loop"
    for daw, lrrb in SWITCHES:
        name = f"daw_{daw}-lrrb_{lrrb}"  # single runs: folders named freely, no job number
        overrides = [f"daw={daw}", f"lrrb={lrrb}", "+sweep_id=loop", f"paths.output_dir={sweep}/{name}"]
        make_job(sweep, 0, overrides, {"psnr": 20.0, "ssim": 0.5}, make_config(daw, lrrb, 0), name=name)
    assert main([str(sweep), "--wandb", "off"]) == 0
    labels = sorted(r["configuration"] for r in table(sweep))
    assert labels == sorted(f"daw={daw},lrrb={lrrb}" for daw, lrrb in SWITCHES)
