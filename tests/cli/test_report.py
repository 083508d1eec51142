"""fidesr-report on synthetic sweep folders the tests write (job folders as fidesr-train / fidesr-eval
multiruns leave them): rows, mean +- std, best marks by direction, failures, provenance warnings, paper
rows, plots, the LFIM mode and the W&B upload (offline)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fidesr.cli.report import main, one_line, parse_override
from fidesr.metrics.published import ABLATION_DAW_LRRB
from fidesr.metrics.tables import read_csv, write_csv
from fidesr.runinfo import config_hash, write_run_info

DAW = {"_target_": "fidesr.components.daw.DetailAwareWeighting", "alpha": 0.6}
LRRB = {"_target_": "fidesr.components.lrrb.LatentResidualRefinementBlock", "mid_channels": 64}


def make_config(daw: str, lrrb: str, seed: int, **extra: Any) -> dict[str, Any]:
    """A job config shaped like the train app's (interpolations kept, as in .hydra/config.yaml)."""
    return {"task_name": "ablation", "seed": seed, "paths": {"output_dir": "/runs/${now:%H-%M-%S-%f}"},
            "daw": DAW if daw == "on" else None, "lrrb": LRRB if lrrb == "on" else None,
            "model": {"daw": "${daw}", "lrrb": "${lrrb}", "seed": "${seed}", "lr": extra.pop("lr", 1e-3)},
            "callbacks": {"ckpt": {"dirpath": "${paths.output_dir}/checkpoints"}}, **extra}  # fmt: skip


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
) -> Path:
    """One job folder: .hydra/{config,overrides}.yaml, metrics.csv (2 validations), csv/metrics.csv,
    run_info.json."""
    job = sweep / (name or f"{num}_{','.join(overrides)}")
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create(dict(config)), job / ".hydra" / "config.yaml")
    if metrics is not None:
        first = {m: v * 0.9 for m, v in metrics.items()}
        rows = [{"step": 0, "epoch": 0, "set": "demo", "images": 4, **first},
                {"step": 10, "epoch": 0, "set": "demo", "images": 4, **metrics}]  # fmt: skip
        write_csv(job / "metrics.csv", rows, ["step", "epoch", "set", "images", *metrics])
    losses = losses or {"train/loss/mse": [0.3, 0.2, 0.1], "train/loss/total": [1.0, 0.8, 0.7]}
    log = [{"step": s, **{k: v[s] for k, v in losses.items()}} for s in range(3)]
    write_csv(job / "csv" / "metrics.csv", log, ["step", *losses])
    write_run_info(job, {"status": status, "git_commit": commit, "git_dirty": False, "code_hash": "c" * 64,
                         "source_files": {"fidesr/model.py": "1"}, "package_version": "0.1.0", "config_hash": config_hash(OmegaConf.create(dict(config))),
                         "seed": config.get("seed"), "sweep_id": f"ablation_{sweep.name}", "error": error})  # fmt: skip
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
            metrics = {"psnr": 20.0 + bonus + seed, "ssim": 0.5 + 0.01 * bonus, "lpips": 0.4 - 0.01 * bonus,
                       "musiq": 50.0 + bonus}  # fmt: skip
            make_job(sweep, num, [f"daw={daw}", f"lrrb={lrrb}", f"seed={seed}", "trainer.max_steps=10"],
                     metrics, make_config(daw, lrrb, seed), **job_kwargs)  # fmt: skip
            num += 1
    return sweep


def table(sweep: Path, name: str = "ablation.csv") -> list[dict[str, Any]]:
    return read_csv(sweep / name)


def test_parse_override_and_one_line() -> None:
    assert parse_override("+model.lr=1e-4") == ("model.lr", "1e-4")
    assert parse_override("daw@x=on") == ("daw", "on")
    assert one_line("a\n  b\n c", limit=100) == "a b c"
    assert one_line("x" * 50, limit=10).endswith("…")


def test_ablation_table_mean_std_best_and_plots(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    assert main([str(sweep), "--wandb", "off"]) == 0
    rows = table(sweep)
    assert [r["configuration"] for r in rows] == ["daw=on,lrrb=on", "daw=on,lrrb=off", "daw=off,lrrb=on",
                                                  "daw=off,lrrb=off"]  # fmt: skip
    best = rows[0]
    assert best["n_seeds"] == 2 and best["seeds"] == "0 1" and best["step"] == 10
    assert best["psnr"] == pytest.approx(23.5) and best["psnr_std"] == pytest.approx(math.sqrt(0.5))
    assert best["lpips"] == pytest.approx(0.37)
    # Directions: PSNR/SSIM/MUSIQ highest and LPIPS lowest all belong to the first configuration.
    assert set(best["best"].split(";")) == {"psnr", "ssim", "lpips", "musiq"}
    assert all(not r["best"] for r in rows[1:])
    assert best["daw"] == "on" and best["lrrb"] == "on" and best["git_commit"] == "a" * 12
    md = (sweep / "ablation.md").read_text()
    assert "**23.5000 ± 0.7071**" in md and "LPIPS ↓" in md and "PSNR ↑" in md
    assert "Warnings" not in md and "Failed" not in md
    for png in ("curves.png", "bars.png", "perception_distortion.png", "val_curves.png"):
        assert (sweep / png).stat().st_size > 1000, png


def test_failed_job_listed_and_left_out(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, seeds=(0,))
    make_job(sweep, 4, ["daw=on", "lrrb=on", "seed=0", "trainer.max_steps=10", "model.lr=99"], None,
             make_config("on", "on", 0), status="failed", error="ValueError: lr=99 is absurd")  # fmt: skip
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


def test_paper_rows_beside_ours(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, seeds=(0,))
    assert main([str(sweep), "--wandb", "off", "--paper-rows"]) == 0
    rows = table(sweep)
    labels = [r["configuration"] for r in rows]
    assert labels[:2] == ["daw=on,lrrb=on", "paper: +DAW +LRRB"]
    assert labels[-2:] == ["daw=off,lrrb=off", "paper: base"]
    paper = rows[1]
    assert paper["musiq"] == ABLATION_DAW_LRRB[(True, True)].values["musiq"] and not paper["best"]
    assert paper["source"].startswith("FiDeSR paper")
    md = (sweep / "ablation.md").read_text()
    assert "| paper: +DAW +LRRB |" in md and "68.29" in md and "NIQE ↓" in md


def test_no_perceptual_metric_no_scatter(tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    for i, (daw, lrrb) in enumerate(SWITCHES):
        make_job(sweep, i, [f"daw={daw}", f"lrrb={lrrb}"], {"psnr": 20.0 + i, "ssim": 0.5},
                 make_config(daw, lrrb, 0))  # fmt: skip
    assert main([str(sweep), "--wandb", "off"]) == 0
    assert not (sweep / "perception_distortion.png").exists()
    assert "No perception-distortion plot" in (sweep / "ablation.md").read_text()
    assert (sweep / "bars.png").is_file() and (sweep / "curves.png").is_file()


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
            OmegaConf.save(OmegaConf.create({"checkpoint": "/ckpt/last.ckpt", "lfim": {"lf_scale": lf, "hf_scale": hf}}),
                           job / ".hydra" / "config.yaml")  # fmt: skip
            rows = [{"label": "sr", "source": "this evaluation", "images": 4, "psnr": 25 - 2 * lf - hf,
                     "ssim": 0.7 - 0.1 * lf, "musiq": 60 + 10 * lf + 5 * hf, "clipiqa": 0.5 + 0.1 * hf},
                    {"label": "FiDeSR (paper)", "source": "paper", "psnr": 26.02}]  # fmt: skip
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
    sweep = make_sweep(tmp_path, seeds=(0,))
    assert main([str(sweep), "--wandb", "on"]) == 0
    runs = list((sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
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
