"""Validation image grids: LQ | SR | GT | detail map | DAW weight map, with column labels and a colour bar
for the maps, and the final SR samples."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from fidesr.components.daw import detail_map
from fidesr.data.imageio import save_image

log = logging.getLogger(__name__)


#: Column titles of the grid, in the order ``_columns`` builds them.
COLUMN_LABELS = ("LQ (bicubic)", "SR", "GT", "detail map", "DAW weights")
_PAD = 2


def _colormap(m: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] map -> [B,3,H,W] in [0,1]: scaled by its per-image max, then viridis (for display only)."""
    from matplotlib import colormaps

    m = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    lut = torch.as_tensor(colormaps["viridis"](np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)
    return lut[(m[:, 0].clamp(0, 1) * 255).round().long()].permute(0, 3, 1, 2)


def render_grid(cols: list[torch.Tensor], labels: list[str], n_maps: int) -> torch.Tensor:
    """Rows are images, columns ``cols`` (each [B,3,H,W] in [0,1]), a title above each column and, when the
    last ``n_maps`` columns are maps, a viridis colour bar under them (0 to each image's own max).

    Returns [3, H', W'] in [0,1].
    """
    grid = make_grid(torch.stack(cols, dim=1).flatten(0, 1), nrow=len(cols), padding=_PAD, pad_value=1.0)
    cell = cols[0].shape[-1] + _PAD
    font = ImageFont.load_default(size=max(9, min(16, cell // 9)))
    head = font.size + 6
    foot = font.size * 2 + 12 if n_maps else 0
    canvas = Image.new("RGB", (grid.shape[-1], grid.shape[-2] + head + foot), "white")
    canvas.paste(Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()), (0, head))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((i * cell + _PAD + cell // 2, head // 2 + 1), label, fill="black", font=font, anchor="mm")
    if n_maps:
        x0, x1 = (len(cols) - n_maps) * cell + _PAD, len(cols) * cell
        y0 = head + grid.shape[-2] + 2
        bar = _colormap(torch.linspace(0, 1, x1 - x0).expand(1, 1, font.size, -1).contiguous())[0]
        canvas.paste(Image.fromarray((bar.permute(1, 2, 0) * 255).round().byte().numpy()), (x0, y0))
        top = (
            "max of each image" if draw.textlength("0 max of each image", font=font) < x1 - x0 - 8 else "max"
        )
        draw.text((x0, y0 + font.size + 2), "0", fill="black", font=font)
        draw.text((x1 - 2, y0 + font.size + 2), top, fill="black", font=font, anchor="ra")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


class ValidationImages(L.Callback):
    """Writes one grid per validation set and step: rows are images, columns LQ (bicubic) | SR | GT, plus
    the detail map and the DAW weight map when the model has DAW (labelled columns; the maps in viridis,
    each scaled to its own max, with a colour bar). At the end of fitting, the SR images of
    the last validation are kept as ``samples/<set>/<name>.png``.

    Args:
        max_images: images per grid (the first ones of each set).
        log_to_logger: also send grids to W&B / TensorBoard when attached.
    """

    def __init__(self, max_images: int = 4, log_to_logger: bool = True) -> None:
        self.max_images, self.log_to_logger = max_images, log_to_logger
        self._rows: dict[str, list[dict]] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = {}

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not outputs or trainer.sanity_checking:
            return
        rows = self._rows.setdefault(outputs["set"], [])
        for i in range(outputs["sr"].shape[0]):
            rows.append(
                {k: outputs[k][i].detach().float().cpu() for k in ("lq", "sr", "gt")}
                | {"name": outputs["name"][i]}
            )

    def _columns(self, pl_module, rows: list[dict]) -> list[torch.Tensor]:
        lq, sr, gt = (torch.stack([r[k] for r in rows]) for k in ("lq", "sr", "gt"))
        cols = [lq, sr, gt]
        daw = getattr(pl_module, "daw", None)
        if daw is not None and getattr(pl_module, "perceptual", None) is not None:
            with torch.no_grad():
                gt_m, sr_m = gt * 2 - 1, sr * 2 - 1
                lp = pl_module.perceptual.to("cpu")(sr_m, gt_m)
                pl_module.perceptual.to(pl_module.device)
                # The weights the training step would use now (the module's call, with its p and schedule).
                weights = daw(sr_m, gt_m, lp, max(pl_module.global_step, 1))
            cols.append(_colormap(detail_map(gt_m)))  # the detail term D, shown for reference
            if weights is not None:
                cols.append(_colormap(weights))
        return cols

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        out_dir = Path(trainer.default_root_dir) / "samples"
        for set_name, rows in self._rows.items():
            rows = rows[: self.max_images]
            if not rows or any(r["sr"].shape != rows[0]["sr"].shape for r in rows):
                continue
            cols = self._columns(pl_module, rows)
            size = cols[1].shape[-2:]
            cols = [c if c.shape[-2:] == size else F.interpolate(c, size=size, mode="nearest") for c in cols]
            grid = render_grid(cols, list(COLUMN_LABELS[: len(cols)]), n_maps=len(cols) - 3)
            path = save_image(grid, out_dir / f"grid_{set_name}_step{trainer.global_step:07d}.png")
            if self.log_to_logger:
                self._log_grid(trainer, f"val/{set_name}/grid", grid)
            log.debug("wrote %s", path)

    @staticmethod
    def _log_grid(trainer: L.Trainer, key: str, grid: torch.Tensor) -> None:
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[grid.permute(1, 2, 0).numpy()], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image(key, grid, global_step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out_dir = Path(trainer.default_root_dir) / "samples"
        for set_name, rows in self._rows.items():
            for r in rows:
                save_image(r["sr"], out_dir / set_name / f"{r['name']}.png")
