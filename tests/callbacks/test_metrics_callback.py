"""ValidationMetrics with a real Trainer on CPU and a tiny LightningModule whose validation_step returns
the documented dicts (bicubic x4 "SR" of real RealSR crops, or synthetic images without ../shared)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from fidesr.callbacks.metrics import ValidationMetrics, monitor_mode
from fidesr.metrics.images import read_for_metrics
from fidesr.metrics.tables import read_csv
from fidesr.weights import WeightsMissingError

REALSR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "realsr"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    wd = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("FIDESR_WEIGHTS_DIR", str(wd))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    home, hub = os.environ.get("TORCH_HOME"), torch.hub._hub_dir
    yield wd
    os.environ.pop("TORCH_HOME", None) if home is None else os.environ.update(TORCH_HOME=home)
    torch.hub._hub_dir = hub


def _pairs(n: int, seed: int) -> list[dict]:
    """n aligned (LQ 32 px, GT 128 px) pairs in [0,1]: RealSR crops when available."""
    out = []
    if REALSR.is_dir() and seed == 0:
        for name in sorted(os.listdir(REALSR / "gt"))[:n]:
            gt = read_for_metrics(REALSR / "gt" / name)[0, :, 128:256, 128:256]
            lq = read_for_metrics(REALSR / "lq" / name)[0, :, 32:64, 32:64]
            out.append({"lq": lq, "gt": gt, "name": name})
        return out
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        gt = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=128, mode="bicubic").clamp(0, 1)[0]
        lq = F.interpolate(gt[None], size=32, mode="area")[0]
        out.append({"lq": lq, "gt": gt, "name": f"synth_{i}.png"})
    return out


class TinySR(pl.LightningModule):
    """Bicubic x4 as the 'model'; one scalar parameter so that fit() has something to train."""

    val_set_names = ["realsr", "synth"]

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.bias - 0.01) ** 2 + 0 * batch.sum()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        up = F.interpolate(batch["lq"], scale_factor=4, mode="bicubic", align_corners=False)
        sr = (up + self.bias).clamp(0, 1)
        return {
            "sr": sr,
            "gt": batch["gt"],
            "lq": up.clamp(0, 1),
            "name": batch["name"],
            "set": self.val_set_names[dataloader_idx],
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(4, 1), batch_size=2)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(_pairs(4, 0), batch_size=2), DataLoader(_pairs(3, 1), batch_size=2)]


class _PooledFeatures(torch.nn.Module):
    """Stand-in FID extractor ([N,3,299,299] in [0,255] -> [N,48]); the real Inception is user-supplied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)


class _Brightness(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(1, 2, 3)) - y.mean(dim=(1, 2, 3))).abs()


def test_validation_metrics_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables: list[tuple] = []  # W&B is disabled in tests: capture what the callback hands to the logger
    monkeypatch.setattr(
        WandbLogger,
        "log_table",
        lambda self, key, columns=None, data=None, step=None: tables.append((key, columns, data, step)),
    )
    key = "val/realsr/psnr"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode=monitor_mode(key), save_top_k=1)
    cb = ValidationMetrics(
        metrics=["psnr", "ssim", "lpips", "musiq"],
        required=["psnr", "ssim"],
        fid=True,
        stand_ins={"lpips": _Brightness(), "fid": _PooledFeatures()},
        wandb_max_images=2,
    )
    loggers = [
        CSVLogger(tmp_path, name="csv"),
        WandbLogger(project="t", save_dir=str(tmp_path), mode="disabled"),
    ]
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=2,
        num_sanity_val_steps=1,
        logger=loggers,
        callbacks=[cb, ckpt],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer.fit(TinySR())
    skipped = [w for w in rec if "weights missing" in str(w.message)]
    assert len(skipped) == 1 and "musiq" in str(skipped[0].message)  # one warning, not one per validation

    # Tables and images go to the run directory; loggers keep their own sub-folders (csv/version_0).
    run = Path(trainer.default_root_dir)
    assert run == tmp_path and Path(trainer.log_dir) == tmp_path / "csv" / "version_0"
    steps = sorted(int(p.name.split("_")[1]) for p in (run / "val").glob("step_*"))
    assert steps == [2, 4]  # two validations, none for the sanity check

    # logged keys, identical to what ModelCheckpoint monitors
    metrics = trainer.callback_metrics
    for set_name in ("realsr", "synth"):
        for m in ("psnr", "ssim", "lpips-standin", "fid-standin"):
            assert f"val/{set_name}/{m}" in metrics
        assert f"val/{set_name}/musiq" not in metrics
    assert ckpt.best_model_score is not None
    assert float(ckpt.best_model_score) == pytest.approx(
        max(r["psnr"] for r in read_csv(run / "metrics.csv") if r["set"] == "realsr"), abs=1e-4
    )

    # images and per-image values of the last validation
    sr_dir = run / "val" / "step_4" / "realsr"
    assert len(list(sr_dir.glob("*.png"))) == 4 and len(list((run / "val/gt/synth").glob("*.png"))) == 3
    # the inputs, once: GT and the LQ at its native size (fidesr-report's comparisons.png crops them)
    lq_files = sorted((run / "val/lq/realsr").glob("*.png"))
    assert (
        len(lq_files) == 4
        and read_for_metrics(lq_files[0]).shape[-1] * 4
        == read_for_metrics(sr_dir / lq_files[0].name).shape[-1]
    )
    per_image = read_csv(sr_dir / "per_image.csv")
    assert len(per_image) == 4 and list(per_image[0]) == ["name", "psnr", "ssim", "lpips-standin"]
    assert float(metrics["val/realsr/psnr"]) == pytest.approx(sum(r["psnr"] for r in per_image) / 4, abs=1e-4)

    # metrics.csv/.md in the run dir (the CSVLogger's own metrics.csv is in its log_dir): one row per
    # (step, set); skipped metric: n/a
    assert "val/realsr/psnr" in read_csv(Path(trainer.log_dir) / "metrics.csv")[-1]
    rows = read_csv(run / "metrics.csv")
    assert [(r["step"], r["set"]) for r in rows] == [(2, "realsr"), (2, "synth"), (4, "realsr"), (4, "synth")]
    assert rows[0]["images"] == 4 and rows[1]["images"] == 3
    assert all(r["musiq"] == "n/a (weights missing)" for r in rows)
    md = (run / "metrics.md").read_text()
    assert (
        "| step | epoch | set | images | PSNR ↑ | SSIM ↑ | LPIPS-STANDIN ↓ | MUSIQ ↑ | FID-STANDIN ↓ |" in md
    )
    assert "## Best per set" in md

    # the saved images are what was scored: fidesr-eval on the folder gives the logged numbers
    from fidesr.metrics import MetricSuite

    suite = MetricSuite(["psnr", "ssim"])
    for r in per_image:
        stem = r["name"].rsplit(".", 1)[0]
        s = suite.score(
            read_for_metrics(sr_dir / f"{stem}.png"), read_for_metrics(run / "val/gt/realsr" / f"{stem}.png")
        )
        assert s["psnr"].item() == pytest.approx(r["psnr"], abs=1e-4)
        assert s["ssim"].item() == pytest.approx(r["ssim"], abs=1e-9)

    # W&B: one per-image table per set and validation, thumbnails for the first wandb_max_images
    import wandb

    assert [(k, st) for k, _, _, st in tables] == [
        ("val/realsr/per_image", 2),
        ("val/synth/per_image", 2),
        ("val/realsr/per_image", 4),
        ("val/synth/per_image", 4),
    ]
    _, columns, data, _ = tables[2]
    assert columns == ["name", "psnr", "ssim", "lpips-standin", "sr", "gt", "lq"] and len(data) == 4
    assert data[0][1] == pytest.approx(per_image[0]["psnr"])
    assert all(isinstance(x, wandb.Image) for x in data[1][4:]) and data[3][4:] == [None, None, None]

    # history survives in the callback state (checkpoint resume)
    assert (
        ValidationMetrics().load_state_dict(cb.state_dict()) is None and len(cb.state_dict()["history"]) == 4
    )


def test_required_metric_without_weights_stops_before_training(tmp_path: Path) -> None:
    cb = ValidationMetrics(metrics=["psnr", "lpips"], required=["psnr", "lpips"])
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=1,
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    model = TinySR()
    with pytest.raises(WeightsMissingError, match="alexnet-owt-7be5be79.pth"):
        trainer.fit(model)
    assert trainer.global_step == 0


def test_no_images_kept_when_save_images_false(tmp_path: Path) -> None:
    cb = ValidationMetrics(
        metrics=["psnr"], fid=True, save_images=False, stand_ins={"fid": _PooledFeatures()}
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(TinySR())
    assert "val/synth/fid-standin" in trainer.callback_metrics
    assert not list((tmp_path / "val" / "step_1").rglob("*.png"))
    assert (tmp_path / "val" / "step_1" / "synth" / "per_image.csv").is_file()
    assert (tmp_path / "metrics.csv").is_file()
