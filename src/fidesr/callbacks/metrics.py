"""``ValidationMetrics``: the protocol metrics on every validation, per named validation set.

Consumes what ``FiDeSRModule.validation_step`` returns (docs/ARCHITECTURE.md)::

    {"sr": [B,3,H,W] in [0,1], "gt": [B,3,H,W] in [0,1], "lq": [B,3,H,W] in [0,1] (upsampled),
     "name": list[str], "set": str}

and, per set, logs every metric as ``val/<set>/<metric>`` (so ``ModelCheckpoint(monitor=...,
mode=monitor_mode(metric))`` can watch any of them), writes the SR images under
``<run>/val/step_<N>/<set>/`` (GT and the native-size LQ once under ``<run>/val/gt/<set>/`` and
``<run>/val/lq/<set>/``), computes FID between the SR and GT folders, keeps the per-image values of every
validation (``per_image.csv`` beside the images: what ``fidesr-report`` pairs configurations on), logs a W&B table of per-image
values and thumbnails when a ``WandbLogger`` is attached, and rewrites ``<run>/metrics.md`` and
``<run>/metrics.csv`` (one row per (step, set)) after each validation and at the end of fit.
``<run>`` is ``trainer.log_dir`` (or ``trainer.default_root_dir``); next to a ``CSVLogger``, which owns
``<run>/metrics.csv``, the tables are ``val_metrics.md``/``val_metrics.csv``.

Metric values are computed on SR/GT rounded to 8 bits (``quantize=True``), i.e. on exactly the images
written to disk, so ``fidesr-eval`` on the saved folder reproduces the logged numbers.

DDP: each rank scores its own batches and writes its own images; per-image rows are gathered with
``all_gather_object`` (duplicates from sampler padding dropped by name), so every rank logs the same
values; FID runs on rank 0 and is broadcast.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from fidesr import weights as W
from fidesr.files import atomic_write_text
from fidesr.metrics.images import quantize, safe_stem, save_image, thumbnail
from fidesr.metrics.suite import MetricSuite
from fidesr.metrics.tables import markdown_table, write_csv
from fidesr.protocol import (
    PROTOCOL,
    ProtocolOptions,
    canonical_name,
    get_spec,
    monitor_mode,
    parse_metric_config,
)

# monitor_mode is re-exported: ModelCheckpoint(monitor=key, mode=monitor_mode(key)) for any logged key.
__all__ = ["ValidationMetrics", "monitor_mode"]

_FIXED = ["step", "epoch", "set", "images"]


class ValidationMetrics(pl.Callback):
    """Validation metrics, images, FID and tables (see module doc).

    Args:
        metrics: metric names or the ``conf/metrics`` mapping (name -> options, ``required: true``).
        required: metrics whose weights must be present (checked in ``setup``, before any step); others
            with missing weights are skipped with one warning and tabulated as ``n/a (weights missing)``.
        protocol: the suite-wide protocol options (:class:`fidesr.protocol.ProtocolOptions`; None: defaults).
        weights_dir: metric weights directory (default ``$FIDESR_WEIGHTS_DIR`` or ``~/.cache/fidesr``).
        fid: ``None`` = compute FID if it is among ``metrics``; ``True``/``False`` force it on/off.
        save_images: keep the SR images of every validation (they are written anyway when FID needs
            them, and then deleted after FID if ``False``).
        wandb_table: log a per-image table with thumbnails when a ``WandbLogger`` is attached.
        wandb_max_images: thumbnails per set and validation (the values are logged for all images).
        thumbnail_size: longest side of W&B thumbnails, pixels.
        quantize: score the 8-bit images that are saved (protocol) rather than the float outputs.
        fid_batch_size, fid_num_workers: FID feature extraction loader.
        stand_ins: metric -> stand-in network (tests only; reported as ``<name>-standin``).
        tables_name: stem of the run-level tables; ``None``: ``metrics`` (``metrics.md``/``metrics.csv``),
            or ``val_metrics`` when a ``CSVLogger`` writes its own ``metrics.csv`` into the same folder.
    """

    def __init__(
        self,
        metrics: Sequence[str] | Mapping[str, Mapping[str, Any] | None] = tuple(PROTOCOL),
        required: Iterable[str] = ("psnr", "ssim"),
        protocol: ProtocolOptions | None = None,
        weights_dir: str | None = None,
        fid: bool | None = None,
        save_images: bool = True,
        wandb_table: bool = True,
        wandb_max_images: int = 16,
        thumbnail_size: int = 128,
        quantize: bool = True,
        fid_batch_size: int = 8,
        fid_num_workers: int = 0,
        stand_ins: Mapping[str, Any] | None = None,
        tables_name: str | None = None,
    ) -> None:
        super().__init__()
        names, cfg_required, self._options = parse_metric_config(metrics)
        if fid is True and "fid" not in names:
            names.append("fid")
        elif fid is False:
            names = [n for n in names if n != "fid"]
        self.metric_names = names
        self.required = sorted({*(canonical_name(str(r)) for r in required), *cfg_required})
        self.suite_kwargs = dict(
            protocol=protocol,
            weights_dir=weights_dir,
            fid_batch_size=fid_batch_size,
            fid_num_workers=fid_num_workers,
        )
        self.save_images, self.wandb_table = save_images, wandb_table
        self.wandb_max_images, self.thumbnail_size, self.quantize = wandb_max_images, thumbnail_size, quantize
        self.stand_ins = {canonical_name(k): v for k, v in (stand_ins or {}).items()}
        self.tables_name = tables_name
        self.suite: MetricSuite | None = None
        self.run_dir: Path | None = None
        self.history: list[dict[str, Any]] = []  # one row per (step, set), all validations
        self.per_image: dict[str, list[dict[str, Any]]] = {}  # latest validation, per set
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._thumbs: dict[str, list[list[Any]]] = {}
        self._gt_written: set[str] = set()
        self._wandb: Any = None  # the attached WandbLogger, if any
        self._active = False

    # ---- set-up ---------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Fail fast: required metrics with missing weights stop the run here, before any step.
        real = [n for n in self.metric_names if n not in self.stand_ins]
        W.check_weights(real, self.required, self.suite_kwargs["weights_dir"])
        # The run directory (paths.output_dir); loggers keep their own sub-folders (csv/, tensorboard/).
        self.run_dir = Path(trainer.default_root_dir)
        if self.tables_name is None:
            csv_dirs = {Path(lg.log_dir) for lg in trainer.loggers if type(lg).__name__ == "CSVLogger"}
            self.tables_name = "val_metrics" if self.run_dir in csv_dirs else "metrics"

    def _run_dir(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("ValidationMetrics has not been set up by a trainer: no run directory yet")
        return self.run_dir

    def table_path(self, suffix: str) -> Path:
        """``<run>/metrics.csv`` / ``.md`` (see ``tables_name``)."""
        return self._run_dir() / f"{self.tables_name or 'metrics'}{suffix}"

    def _build_suite(self, trainer: pl.Trainer) -> MetricSuite:
        # Built at the first validation, when the module is on its device; then reused (models built once).
        if self.suite is None:
            self.suite = MetricSuite(
                self.metric_names,
                required=self.required,
                options=self._options,
                device=trainer.strategy.root_device,
                stand_ins=self.stand_ins,
                **self.suite_kwargs,
            )
        return self.suite

    # ---- validation loop ----------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = not trainer.sanity_checking  # sanity batches are not a validation
        if not self._active:
            return
        self._build_suite(trainer)
        self._rows, self._thumbs = {}, {}
        self._wandb = next((lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"), None)

    def step_dir(self, trainer: pl.Trainer) -> Path:
        return self._run_dir() / "val" / f"step_{trainer.global_step}"

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or not isinstance(outputs, Mapping) or "sr" not in outputs:
            return
        suite = self._build_suite(trainer)
        set_name = str(outputs.get("set") or _set_name(pl_module, dataloader_idx))
        sr, gt = outputs["sr"].detach(), outputs.get("gt")
        gt = gt.detach() if gt is not None else None
        if self.quantize:
            sr, gt = quantize(sr.float()), quantize(gt.float()) if gt is not None else None
        names = [str(n) for n in outputs["name"]]
        scores = suite.score(sr, gt, allow_missing_gt=True)  # a set without GT gets no-reference metrics
        rows = self._rows.setdefault(set_name, [])
        rows += [{"name": n, **{m: float(v[i]) for m, v in scores.items()}} for i, n in enumerate(names)]

        if self.save_images or suite.has_fid:
            for i, n in enumerate(names):
                save_image(sr[i], self.step_dir(trainer) / set_name / f"{safe_stem(n)}.png")
        if set_name not in self._gt_written and (self.save_images or suite.has_fid):
            # The inputs once per set (FID needs the GT folder; fidesr-report's comparisons.png crops
            # GT and the native-size LQ of the batch beside every configuration's SR).
            lq = batch.get("lq") if isinstance(batch, Mapping) and self.save_images else None
            for kind, images in (("gt", gt), ("lq", lq)):
                for i, n in enumerate(names if images is not None else []):
                    save_image(
                        images[i].float(), self._run_dir() / "val" / kind / set_name / f"{safe_stem(n)}.png"
                    )
        if self._wandb is not None and self.wandb_table:
            thumbs = self._thumbs.setdefault(set_name, [])
            lq = outputs.get("lq")
            for i, n in enumerate(names):
                if len(thumbs) >= self.wandb_max_images:
                    break
                imgs = [sr[i], gt[i] if gt is not None else None, lq[i] if lq is not None else None]
                thumbs.append(
                    [n, *[thumbnail(x, self.thumbnail_size) if x is not None else None for x in imgs]]
                )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        suite = self._build_suite(trainer)
        gathered = _all_gather_object(self._rows)
        order = [*_declared_sets(pl_module), *[s for g in gathered for s in g]]
        sets = [s for i, s in enumerate(order) if s not in order[:i] and any(s in g for g in gathered)]
        step_dir = self.step_dir(trainer)
        new_rows = []
        for set_name in sets:
            rows = [r for g in gathered for r in g.get(set_name, [])]
            scored = [m for m in suite.active if any(m in r for r in rows)]  # a set without GT: NR only
            values: dict[str, Any] = suite.summarize(rows, scored)
            n_images = len({r["name"] for r in rows})
            if suite.has_fid:
                values[suite.fid_name] = self._fid(trainer, step_dir / set_name, set_name)
            for metric, value in values.items():
                # Every rank holds the same value (gathered rows, broadcast FID), so the sync is a no-op
                # numerically; it keeps Lightning's epoch-level logging contract in DDP.
                pl_module.log(
                    f"val/{set_name}/{metric}",
                    float(value),
                    on_step=False,
                    on_epoch=True,
                    sync_dist=True,
                    add_dataloader_idx=False,
                )
            values.update(suite.skipped)
            new_rows.append(
                {
                    "step": trainer.global_step,
                    "epoch": trainer.current_epoch,
                    "set": set_name,
                    "images": n_images,
                    **values,
                }
            )
            self.per_image[set_name] = _unique(rows)
            self._gt_written.add(set_name)
        self.history = [h for h in self.history if h["step"] != trainer.global_step] + new_rows
        if trainer.is_global_zero:
            for set_name in sets:
                write_csv(
                    step_dir / set_name / "per_image.csv", self.per_image[set_name], ["name", *suite.active]
                )
            self.write_tables()
            self._log_wandb_tables(trainer, sets)
        if not self.save_images and suite.has_fid:
            trainer.strategy.barrier()
            if trainer.is_global_zero:
                for set_name in sets:
                    for png in (step_dir / set_name).glob("*.png"):
                        png.unlink()

    def _fid(self, trainer: pl.Trainer, sr_dir: Path, set_name: str) -> float:
        trainer.strategy.barrier()  # every rank has written its images
        value = float("nan")
        if trainer.is_global_zero:
            gt_dir = self.run_dir / "val" / "gt" / set_name
            if gt_dir.is_dir():
                value = self.suite.fid(sr_dir, gt_dir)
            else:
                warnings.warn(f"FID skipped for {set_name}: no GT images (outputs had no 'gt')", stacklevel=2)
        return float(trainer.strategy.broadcast(value, src=0))

    def _log_wandb_tables(self, trainer: pl.Trainer, sets: Sequence[str]) -> None:
        logger = self._wandb
        if logger is None or not self.wandb_table:
            return
        suite = self.suite
        metrics = suite.active
        for set_name in sets:
            thumbs = {t[0]: t[1:] for t in self._thumbs.get(set_name, [])}
            data = []
            for r in self.per_image.get(set_name, []):
                imgs = [_wandb_image(x) for x in thumbs.get(r["name"], [None, None, None])]
                data.append([r["name"], *[r.get(m) for m in metrics], *imgs])
            logger.log_table(
                f"val/{set_name}/per_image",
                columns=["name", *metrics, "sr", "gt", "lq"],
                data=data,
                step=trainer.global_step,
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.history:
            self.write_tables()

    # ---- tables --------------------------------------------------------------------------------------

    @property
    def table_metrics(self) -> list[str]:
        """Metric columns in the tables (reported names, stand-ins suffixed)."""
        if self.suite is not None:
            return self.suite.names
        return list(self.metric_names)

    def write_tables(self) -> None:
        """``metrics.csv`` and ``metrics.md`` in the run directory, from ``history``."""
        metrics = self.table_metrics
        write_csv(self.table_path(".csv"), self.history, [*_FIXED, *metrics])
        md = ["# Validation metrics", "", markdown_table(self.history, _FIXED, metrics), ""]
        best = self._best(metrics)
        if best:
            md += ["## Best per set", "", markdown_table(best, ["set", "metric", "step"], ["value"]), ""]
        atomic_write_text(self.table_path(".md"), "\n".join(md))

    def _best(self, metrics: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for set_name in dict.fromkeys(h["set"] for h in self.history):
            for m in metrics:
                rows = [h for h in self.history if h["set"] == set_name and isinstance(h.get(m), float)]
                if rows:
                    pick = min if get_spec(m).lower_better else max
                    h = pick(rows, key=lambda r, m=m: r[m])
                    out.append({"set": set_name, "metric": m, "step": h["step"], "value": h[m]})
        return out

    # ---- checkpointing -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # The table history travels with the checkpoint, so a resumed run keeps its earlier rows.
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def _set_name(pl_module: pl.LightningModule, dataloader_idx: int) -> str:
    names = _declared_sets(pl_module)
    return names[dataloader_idx] if dataloader_idx < len(names) else f"val{dataloader_idx}"


def _declared_sets(pl_module: pl.LightningModule) -> list[str]:
    return [str(s) for s in getattr(pl_module, "val_set_names", None) or []]


def _unique(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen.setdefault(r["name"], r)
    return list(seen.values())


def _all_gather_object(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _wandb_image(img: Any) -> Any:
    if img is None:
        return None
    import wandb

    return wandb.Image(img)
