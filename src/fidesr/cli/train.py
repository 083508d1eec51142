"""fidesr-train: the Hydra training app.

fidesr-train experiment=demo                       # tiny backbone, CPU, minutes
fidesr-train experiment=fidesr_sd21 paths.data_dir=/data backbone.pretrained=/models/sd21-base
fidesr-train -m experiment=demo daw=on,off lrrb=on,off   # ablation sweep, one process per job
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fidesr import resume
from fidesr import weights as W
from fidesr.cli import run_hydra
from fidesr.config_types import check_config_types
from fidesr.errors import MissingInputError, PickleRefusedError, TrainingInterrupted, report_errors
from fidesr.loggers import finish_wandb
from fidesr.runinfo import run_job, use_job_dir

log = logging.getLogger("fidesr.train")

CONFIG_PATH = "pkg://fidesr.conf"


def _train_advice() -> dict:
    """What fidesr-train can say about a refused pickle: it has no way to unpickle one (resuming is from
    its own checkpoints, which are tensors and plain values)."""
    return {PickleRefusedError: "ckpt_path must be a checkpoint fidesr-train wrote (they hold nothing else)"}


def short_dirname(text: str, limit: int = 120) -> str:
    """A sweep job's folder name from its overrides, kept under file-system limits (255 bytes).

    Group choices (``lrrb=off``, ``seed=1``: what ablations sweep) come first, dotted keys after; a long
    list is cut and suffixed with a hash of the whole (the full list is in .hydra/overrides.yaml).
    """
    items = text.replace("/", "_").split(",") if text else []
    text = ",".join(sorted(items, key=lambda kv: ("." in kv.split("=")[0], kv)))
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("fidesr_dirname", short_dirname, replace=True)


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if v is not None and "_target_" in v]


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path=last`` is the run's newest (:mod:`fidesr.resume`)."""
    if cfg.get("ckpt_path") in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        path = resume.newest_last_checkpoint(Path(cfg.paths.output_dir) / "checkpoints")
    else:
        path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file ({path})")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from the config, fit (and optionally test); returns the final logged metrics."""
    # Here, not at the top, so that `fidesr-train --help` (2 s) does not import torch and Lightning (9 s).
    import lightning as L
    import torch

    from fidesr.callbacks.training import AtomicCheckpointIO, SaveFinalStep, SaveOnInterrupt
    from fidesr.trust import load_torch_file

    # A wrong type in an override names its key here, not as a TypeError deep inside Lightning.
    check_config_types(OmegaConf.to_container(cfg, resolve=True))
    use_job_dir(cfg)  # a multirun job writes into its own job folder
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.get("accelerator") == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    # Before any model is built: one weights directory for the whole process (and its DDP ranks); missing
    # files of the metrics and of LPIPS-VGG fetched when online, else one error listing them all.
    W.apply_environment(cfg.paths.weights_dir)
    lpips_vgg = OmegaConf.select(cfg, "perceptual.backbone") == "pretrained"
    W.ensure_run_weights(
        cfg.metrics, cfg.paths.weights_dir, also=[W.LPIPS_VGG] if lpips_vgg else [], log=log.info
    )

    ckpt_path = resolve_ckpt_path(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    resumed = None
    if ckpt_path is not None:
        # Before anything is built or recorded: a resume continues the stored run or is refused.
        resumed = load_torch_file(ckpt_path, "training checkpoint")
        resume.check_resume_config(cfg.ckpt_path, resumed, run_config, OmegaConf.to_container(cfg))
    log.info("Output dir: %s", out_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if resumed is not None:
        state = model.state_dict()
        expected = {k: state[k] for k in model.trainable_state_keys() if k in state}
        resume.check_checkpoint_tensors(cfg.ckpt_path, resumed.get("state_dict", {}), expected)
        del resumed  # Lightning reads the file again
    model.run_config = run_config
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    callbacks = _instantiate_dict(cfg.get("callbacks"))
    callbacks.append(SaveFinalStep())  # always: the final step is saved whatever the intervals
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    for lg in loggers:
        lg.log_hyperparams(model.run_config)
    if resume.rank_zero():  # before any rank writes a checkpoint: what a killed write (kill -9) left
        resume.remove_stale_parts(SaveOnInterrupt.checkpoint_path(trainer).parent)

    exit_code = 1
    start = time.time()
    try:
        if cfg.get("validate_before_fit") and ckpt_path is None:
            trainer.validate(model, datamodule=datamodule)  # the step-0 row of metrics.csv
        with warnings.catch_warnings():
            # Lightning cannot see that StepSampler resumes by global step (bit-exact mid-epoch, tested in
            # tests/cli/test_train.py): its "dataloader is not resumable" warning would mislead.
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended before the epoch"
            )
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.get("test") and getattr(datamodule, "test_sets", None):
            trainer.test(model, datamodule=datamodule, ckpt_path=None)
        exit_code = 0 if not trainer.interrupted else 1
        stopper = next((c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
        if stopper is not None and stopper.received:
            exit_code = 1
            raise TrainingInterrupted(stopper.received, trainer.global_step, stopper.saved)
    finally:
        finish_wandb(exit_code)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        _print_summary(out_dir, trainer, datamodule, time.time() - start)
    return metrics


def bicubic_baseline(datamodule, scale: int = 4) -> dict[str, dict[str, float]]:
    """PSNR and SSIM of the bicubic-upsampled LQ against the GT, per validation set (the baseline to
    beat): ``{set: {"psnr": dB, "ssim": value}}``."""
    import torch.nn.functional as F  # torch and the metrics: not for --help (see train)

    from fidesr.metrics import MetricSuite

    out = {}
    suite = MetricSuite(["psnr", "ssim"])
    for name, ds in getattr(datamodule, "val_datasets", {}).items():
        suite.reset()
        for i in range(len(ds)):
            item = ds[i]
            up = F.interpolate(item["lq"][None], scale_factor=scale, mode="bicubic", align_corners=False)
            suite.update(up.clamp(0, 1), item["gt"][None], names=[item["name"]])
        out[name] = suite.compute()
    return out


def _history(trainer) -> dict[str, list[tuple[int, float, float | None]]]:
    """Per validation set, ``(step, psnr, ssim or None)`` of every validation the run logged."""
    from fidesr.callbacks.metrics import ValidationMetrics  # Lightning: not for --help (see train)

    cb = next((c for c in trainer.callbacks if isinstance(c, ValidationMetrics)), None)
    hist: dict[str, list[tuple[int, float, float | None]]] = {}
    for row in cb.history if cb else []:
        if isinstance(row.get("psnr"), float):
            ssim = row.get("ssim")
            hist.setdefault(row["set"], []).append(
                (int(row["step"]), row["psnr"], ssim if isinstance(ssim, float) else None)
            )
    return hist


def _scores(psnr: float, ssim: float | None) -> str:
    return f"{psnr:.2f} dB" + ("" if ssim is None else f" / SSIM {ssim:.4f}")


def _print_summary(out_dir: Path, trainer, datamodule, seconds: float) -> None:
    lines = [f"fidesr: {trainer.global_step} steps in {seconds / 60:.1f} min"]
    bicubic = bicubic_baseline(datamodule) if trainer.global_step else {}
    for set_name, hist in _history(trainer).items():
        hist = sorted(hist)
        first, last = hist[0], hist[-1]
        line = f"  {set_name!r}: step {first[0]} {_scores(*first[1:])} -> step {last[0]} {_scores(*last[1:])}"
        if set_name in bicubic:
            base = bicubic[set_name]
            gain = last[1] - base["psnr"]
            line += f"; bicubic-upsampled LQ {_scores(base['psnr'], base.get('ssim'))} ({gain:+.2f} dB)"
        lines.append(line)
    lines += [
        f"  run directory : {out_dir}",
        f"  metrics       : {out_dir / 'metrics.csv'} (and metrics.md)",
        f"  samples       : {out_dir / 'samples'}",
        f"  checkpoints   : {out_dir / 'checkpoints'}",
    ]
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # run_info.json (commit, config hash, status) per run; a failing sweep job is recorded, not fatal.
    # The user's input errors are one line (the traceback with HYDRA_FULL_ERROR=1).
    try:
        metrics = report_errors("fidesr-train", lambda: run_job(train, cfg), advice=_train_advice()) or {}
    except TrainingInterrupted as stop:
        print(
            f"fidesr-train: interrupted by {stop}; resume with: fidesr-train <the same overrides> "
            f"paths.output_dir={cfg.paths.output_dir} ckpt_path=last",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(stop.exit_code) from None
    # For Hydra sweepers that optimise a metric: cfg.get("optimized_metric").
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


def main() -> None:
    run_hydra("fidesr-train", _hydra_main)


if __name__ == "__main__":
    main()
