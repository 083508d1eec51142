"""The ablation sweep end to end (``fidesr-train -m experiment=ablation_daw_lrrb`` at tiny scale, then
``fidesr-report``), the experiment configs it and the baselines compose to, and the run record
(``fidesr.runinfo``: run_info.json, failure isolation in multirun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fidesr.metrics.tables import read_csv
from fidesr.runinfo import RUN_INFO, SweepSummary, read_run_info, run_job, write_run_info

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------- configs


def test_ablation_config_sweeps_daw_and_lrrb(compose) -> None:
    cfg = compose(["experiment=ablation_daw_lrrb"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"daw": "short,off", "lrrb": "on,off"}
    assert cfg.hydra.callbacks.sweep_summary._target_ == "fidesr.runinfo.SweepSummary"
    assert cfg.backbone._target_ == "fidesr.backbone.build_tiny_backbone"  # the demo scale underneath
    assert cfg.task_name == "ablation_daw_lrrb" and cfg.trainer.accelerator == "cpu"
    assert cfg.daw.warmup_steps == 100  # daw=short: DAW active within the demo's steps
    assert (
        cfg.trainer.val_check_interval == 0.25 and cfg.trainer.check_val_every_n_epoch == 1
    )  # 4 validations, any max_steps
    assert cfg.callbacks.model_checkpoint.every_n_train_steps is None  # not the fraction 0.25


def test_ablation_config_wandb_group_is_the_sweep(compose) -> None:
    cfg = compose(["experiment=ablation_daw_lrrb", "logger=wandb", "+sweep_id=abl_multirun_x"])
    assert cfg.logger.wandb._target_ == "fidesr.loggers.make_wandb_logger"
    assert cfg.logger.wandb.group == "abl_multirun_x"
    cfg = compose(["experiment=ablation_daw_lrrb", "logger=wandb"])
    assert cfg.logger.wandb.group == "ablation_daw_lrrb"  # outside a sweep: the task name


def test_paper_scale_ablation_composes(compose) -> None:
    """The paper-scale command of experiments/ablation/README.md (minus the sweep) composes to SD 2.1."""
    text = (ROOT / "experiments" / "ablation" / "paper_scale_overrides.txt").read_text()
    overrides = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    cfg = compose(
        ["experiment=ablation_daw_lrrb", *overrides, "daw=on", "lrrb=off"], return_hydra_config=True
    )
    assert cfg.backbone._target_.endswith("StableDiffusionBackbone.from_pretrained")
    assert cfg.data._target_ == "fidesr.data.datamodule.SRDataModule" and cfg.data.crop_size == 512
    assert cfg.perceptual != compose(["experiment=demo"]).perceptual  # real LPIPS-VGG, not the stand-in
    assert cfg.model.optimizer.lr == 5e-5 and cfg.model.min_lq_size == 128 and cfg.seed == 123
    assert cfg.daw.warmup_steps == 2000 and cfg.lrrb is None
    assert cfg.prompts._target_ == "fidesr.data.prompts.FilePrompts"  # RAM tags, as the paper
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1  # one process per job


@pytest.mark.parametrize(
    ("experiment", "timestep", "prediction", "degradation"),
    [("osediff_like", 999, "x0", "osediff"), ("pisasr_like", 1, "residual", "pisasr")],
)
def test_baseline_configs(compose, experiment: str, timestep: int, prediction: str, degradation: str) -> None:
    for base, backbone in (("demo", "build_tiny_backbone"), ("fidesr_sd21", "from_pretrained")):
        cfg = compose([f"experiment=[{base},{experiment}]"])
        assert cfg.backbone._target_.endswith(backbone)
        assert cfg.lrrb is None and cfg.daw is None and cfg.lfim is None
        # The distillation term of each: OSEDiff's VSD, PiSA-SR's CSD (docs/baselines.md).
        term = "vsd.Variational" if experiment == "osediff_like" else "csd.Classifier"
        assert f"fidesr.components.distill.{term}" in cfg.distill._target_
        assert cfg.backbone.timestep == timestep and cfg.backbone.prediction == prediction
        expected = compose([f"degradation={degradation}"]).degradation
        assert cfg.degradation == expected


# ------------------------------------------------------------------------------------------- run_info


def test_one_multirun_output_rule_for_train_and_eval(tmp_path: Path, monkeypatch) -> None:
    """A sweep job writes into its job folder: train's ``paths.output_dir`` and eval's ``output_dir`` from
    the one rule (runinfo.use_job_dir); outside a multirun the config is left as it is."""
    from fidesr import runinfo

    cfg = OmegaConf.create({"paths": {"output_dir": "${oc.env:HOME}/run"}, "output_dir": None})
    OmegaConf.set_struct(cfg, True)
    assert runinfo.use_job_dir(cfg) is None and cfg.paths.output_dir == os.environ["HOME"] + "/run"
    job = tmp_path / "sweep" / "0_lrrb=off"
    monkeypatch.setattr(runinfo, "hydra_multirun", lambda: (True, job, tmp_path / "sweep"))
    assert runinfo.use_job_dir(cfg) == job and cfg.paths.output_dir == str(job)
    assert runinfo.use_job_dir(cfg, "output_dir") == job and cfg.output_dir == str(job)


def test_run_job_outside_a_sweep_records_and_reraises(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"seed": 3, "task_name": "t", "paths": {"output_dir": str(tmp_path)}, "lr": 1})
    assert run_job(lambda c: {"ok": 1.0}, cfg) == {"ok": 1.0}
    info = read_run_info(tmp_path)
    assert info["status"] == "completed" and info["end_time"] and info["seed"] == 3
    assert len(info["config_hash"]) == 64 and info["git_commit"] and info["package_version"]

    def boom(c):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # a single run fails as usual
        run_job(boom, cfg)
    info = read_run_info(tmp_path)
    assert (
        info["status"] == "failed"
        and "RuntimeError: boom" in info["error"]
        and "Traceback" in info["traceback"]
    )
    assert "boom" in (tmp_path / "error.txt").read_text()


def test_sweep_summary_lists_failures_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, status in (("0_a", "completed"), ("1_b", "failed"), ("2_c", "running")):
        write_run_info(
            tmp_path / name,
            {"status": status, "error": "ValueError: bad\nsecond line" if status == "failed" else None},
        )
    (tmp_path / "3_d" / ".hydra").mkdir(parents=True)  # a job that wrote no record
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exc:
        SweepSummary().on_multirun_end(config)
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert "1/4 jobs completed" in out and "FAILED 1_b: ValueError: bad second line" in out
    assert "RUNNING 2_c" in out and "UNKNOWN 3_d" in out
    statuses = [j["status"] for j in json.loads((tmp_path / "sweep_status.json").read_text())["jobs"]]
    assert statuses == ["completed", "failed", "running", "unknown"]
    (tmp_path / "1_b" / RUN_INFO).unlink()
    (tmp_path / "1_b" / ".hydra").mkdir()
    SweepSummary().on_multirun_end(config)  # no recorded failure: no exit


# ------------------------------------------------------------------------------------------ the sweep


def _train_calls_run_job() -> bool:
    import fidesr.cli.train as train

    return "run_job(" in Path(train.__file__).read_text()


@pytest.mark.slow
def test_ablation_sweep_and_report(tmp_path: Path, cache_dir: Path, tiny_backbone_folder: Path) -> None:
    """4 configurations train (2 steps each), a 5th..8th job fails at construction (a bad override): the
    failures are listed and the 4 rows with their paired differences, the plots and comparisons.png are
    written."""
    sweep = tmp_path / "sweep"
    env = {
        **os.environ,
        "FIDESR_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }
    cmd = [
        str(BIN / "fidesr-train"),
        "-m",
        "experiment=ablation_daw_lrrb",
        "backbone.ae_warmup_steps=10",
        "backbone.prior_steps=0",
        "backbone.vae_channels=[32,64,64]",
        "data.crop_size=32",
        "data.batch_size=2",
        "data.val_batch_size=4",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "validate_before_fit=false",
        "callbacks.progress_bar=null",
        "callbacks.validation_images=null",
        "trainer.enable_model_summary=false",
        # One bad value per configuration: those jobs raise when the model is built (after the backbone).
        "model.color_fix=adain,bogus",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 8, log
    # Folders are named by the ablation switches; the bad override is in each job's .hydra/overrides.yaml.
    good = [j for j in jobs if "model.color_fix=adain" in OmegaConf.load(j / ".hydra" / "overrides.yaml")]
    assert len(good) == 4 and {j.name.split("_", 1)[1] for j in good} == {
        f"daw={d},lrrb={lr},seed=0" for d in ("short", "off") for lr in ("on", "off")
    }
    assert all((j / "metrics.csv").is_file() for j in good), log  # the good jobs ran despite the failures
    assert proc.returncode != 0, "a sweep with failed jobs must not exit 0"
    if _train_calls_run_job():
        assert "4/8 jobs completed" in proc.stdout, log
        status = json.loads((sweep / "sweep_status.json").read_text())["jobs"]
        assert [j["status"] for j in status].count("failed") == 4
        bad = next(j for j in jobs if j not in good)
        assert read_run_info(bad)["status"] == "failed" and "bogus" in (bad / "error.txt").read_text()
        infos = [read_run_info(j) for j in good]
        assert len({i["sweep_id"] for i in infos}) == 1 and {i["status"] for i in infos} == {"completed"}

    rep = subprocess.run(
        [str(BIN / "fidesr-report"), str(sweep), "--wandb", "off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr
    rows = read_csv(sweep / "ablation.csv")
    assert sorted(r["configuration"] for r in rows) == sorted(
        f"daw={d},lrrb={lr}" for d in ("short", "off") for lr in ("on", "off")
    )
    assert all(r["step"] == 2 and isinstance(r["psnr"], float) for r in rows)
    # Paired on the 16 demo validation images against the all-off configuration, each Δ inside its interval.
    assert {r["baseline"] for r in rows} == {"daw=off,lrrb=off"} and all(r["n_images"] == 16 for r in rows)
    for r in rows:
        assert r["psnr_ci_low"] <= r["psnr_delta"] <= r["psnr_ci_high"], r
    md = (sweep / "ablation.md").read_text()
    assert md.count("**failed**" if _train_calls_run_job() else "**unknown**") == 4
    for png in ("curves.png", "deltas.png", "val_curves.png", "comparisons.png"):
        assert (sweep / png).stat().st_size > 1000, png
    assert all((j / RUN_INFO).is_file() for j in good) == _train_calls_run_job()
