"""``fidesr-eval``: the evaluation protocol on a folder of SR images (like OSEDiff's ``test_metrics.py``).

    fidesr-eval sr_dir=DIR gt_dir=DIR "metrics=[psnr,ssim,niqe]" output_dir=DIR [paper_rows=realsr]

Writes into ``output_dir``: ``per_image.csv`` (``name`` then one column per metric), ``summary.csv`` and
``summary.md`` (our row, then the published rows if ``paper_rows`` is set). SR and GT are matched by file
name; no-reference metrics need no ``gt_dir``. Checkpoint mode (``checkpoint=NAME_OR_PATH lq_dir=...``, the model
as ``fidesr-upscale --model`` takes it; ``lq_dir`` alone uses the released ``fidesr`` model) first produces the
SR folder with ``fidesr.pipeline.FiDeSRPipeline``, then evaluates it the same way.

All metric definitions come from ``fidesr.metrics.MetricSuite`` (the callback uses the same suite).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from fidesr import weights as W
from fidesr.cli import run_hydra
from fidesr.cli.options import pisasr_strengths
from fidesr.data.benchmarks import canonical_set, resolve_set
from fidesr.data.imageio import DEFAULT_MAX_PIXELS
from fidesr.devices import resolve_device
from fidesr.errors import (
    ConfigValueError,
    FidesrError,
    MissingInputError,
    NonFiniteOutputError,
    PickleRefusedError,
    report_errors,
)
from fidesr.files import atomic_write_text
from fidesr.metrics.images import (
    check_images,
    list_images,
    match_pairs,
    read_for_metrics,
    size_mismatches,
)
from fidesr.metrics.published import PUBLISHED, published_rows
from fidesr.metrics.suite import MetricSuite
from fidesr.metrics.tables import markdown_table, write_csv
from fidesr.modelio.released import DEFAULT_MODEL, model_notes
from fidesr.protocol import PROTOCOL, ProtocolOptions, get_spec, parse_metric_config
from fidesr.runinfo import use_job_dir
from fidesr.upscaling import Upscaler

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What ``evaluate_folders`` computed and where it wrote it."""

    summary: dict[str, Any]  # metric -> mean (FID: set value), skipped -> reason
    per_image: list[dict[str, Any]]
    metrics: list[str]  # reported names, table order
    files: dict[str, Path] = field(default_factory=dict)


#: fidesr-eval's way out of a refused pickle is its Hydra key, not the argparse tools' --unsafe-pickle.
EVAL_ADVICE = {
    PickleRefusedError: "if you trust the file's origin, unsafe_pickle=true unpickles it fully, which runs "
    "any code it names"
}


class ImageCheckError(FidesrError, ValueError):
    """Some files of the evaluated folders cannot be read; the message lists every one."""


class _Images(torch.utils.data.Dataset):
    """(name, SR [3,H,W], GT [3,H,W] or empty) per matched pair, read as the protocol reads them."""

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        sr, gt = self.pairs[i]
        return sr.name, read_for_metrics(sr)[0], read_for_metrics(gt)[0] if gt is not None else torch.empty(0)


def _batches(
    pairs: Sequence[tuple[Path, Path | None]], batch_size: int, num_workers: int
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Consecutive images of equal size, up to ``batch_size`` at a time (test sets mix sizes)."""
    loader = torch.utils.data.DataLoader(_Images(pairs), batch_size=None, num_workers=num_workers)
    names: list[str] = []
    srs: list[torch.Tensor] = []
    gts: list[torch.Tensor] = []

    def flush() -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
        out = (list(names), torch.stack(srs), torch.stack(gts) if gts[0].numel() else None)
        for buf in (names, srs, gts):
            buf.clear()
        return out

    for name, sr, gt in loader:
        if srs and (len(srs) >= batch_size or sr.shape != srs[0].shape):
            yield flush()
        names.append(name)
        srs.append(sr)
        gts.append(gt)
    if srs:
        yield flush()


def evaluate_folders(
    sr_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    metrics: Sequence[str] | Any = ("psnr", "ssim"),
    *,
    label: str | None = None,
    paper_rows: str | None = None,
    protocol: ProtocolOptions | None = None,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = True,
    stand_ins: dict[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    notes: Sequence[str] = (),
) -> EvalResult:
    """Folder mode. ``metrics`` is a list of names or the ``conf/metrics`` mapping. See module doc.
    ``notes``: extra lines for summary.md (the model and its prompt source, in checkpoint mode).

    Every SR and GT file is decoded once before any metric runs: unreadable, truncated or oversized files
    are listed together (:class:`ImageCheckError`), instead of stopping at the first one after minutes.
    """
    sr_dir, out = Path(sr_dir), Path(output_dir)
    names, required, options = parse_metric_config(metrics)
    if gt_dir is None:
        dropped = [n for n in names if PROTOCOL[n].needs_gt]
        if dropped:
            log.warning("no gt_dir: skipping the metrics that need ground truth: %s", ", ".join(dropped))
        names = [n for n in names if n not in dropped]
        if not names:
            raise ValueError("no gt_dir and no no-reference metric selected: nothing to compute")
    selection = {n: {**options.get(n, {}), "required": n in required} for n in names}
    for folder, key in ((sr_dir, "sr_dir"), (gt_dir, "gt_dir")):
        if folder is not None and not Path(folder).is_dir():
            raise MissingInputError(f"{key}={folder}: no such folder")
    srs = list_images(sr_dir)
    if not srs:
        raise MissingInputError(f"sr_dir={sr_dir}: no images in the folder")
    pairs: list[tuple[Path, Path | None]] = (
        list(match_pairs(srs, list_images(gt_dir))) if gt_dir is not None else [(p, None) for p in srs]
    )
    problems = check_images([p for pair in pairs for p in pair if p is not None], max_pixels)
    if problems:
        raise ImageCheckError(
            f"{len(problems)} unreadable image(s); nothing was computed:\n  " + "\n  ".join(problems)
        )
    # A pair is scored together: every pair of differing sizes named now, not a shape error later.
    if mismatched := size_mismatches(pairs):
        raise ImageCheckError(
            mismatched[0]
            if len(mismatched) == 1
            else f"{len(mismatched)} SR/GT pairs differ in size; nothing was computed:\n  "
            + "\n  ".join(mismatched)
        )
    suite = MetricSuite(
        selection,
        protocol=protocol,
        weights_dir=weights_dir,
        required=(),
        device=device,
        stand_ins=stand_ins,
        fid_num_workers=num_workers,
    )
    with tqdm(total=len(pairs), desc=f"eval {sr_dir.name}", unit="img", disable=not progress) as bar:
        for batch_names, sr, gt in _batches(pairs, max(1, batch_size), num_workers):
            suite.update(sr, gt, batch_names)
            bar.update(len(batch_names))

    summary: dict[str, Any] = {**suite.compute(), **suite.skipped}
    if suite.has_fid and gt_dir is not None:
        log.info("FID: %s vs %s", sr_dir, gt_dir)
        summary[suite.fid_name] = suite.fid(sr_dir, gt_dir)
    result = EvalResult(summary, suite.per_image, suite.names)
    result.files = write_reports(
        result,
        out,
        label=label or sr_dir.name,
        n_images=len(pairs),
        paper_rows=paper_rows,
        context=[*_context(sr_dir, gt_dir, suite), *notes],
    )
    return result


def _context(sr_dir: Path, gt_dir: Any, suite: MetricSuite) -> list[str]:
    import pyiqa  # imported (after configure) by MetricSuite

    return [
        f"SR: `{sr_dir}`" + (f"; GT: `{gt_dir}`" if gt_dir is not None else "; no GT (no-reference only)"),
        f"{suite.protocol.describe()}; pyiqa {pyiqa.__version__}; "
        f"device {suite.device}; weights `{suite.weights_dir}`",
    ]


def write_reports(
    result: EvalResult,
    out: Path,
    *,
    label: str,
    n_images: int,
    paper_rows: str | None = None,
    context: Sequence[str] = (),
) -> dict[str, Path]:
    """per_image.csv, summary.csv, summary.md; published rows (if any) follow ours."""
    out.mkdir(parents=True, exist_ok=True)
    per_image_cols = ["name", *[m for m in result.metrics if get_spec(m).kind != "distribution"]]
    files = {"per_image": write_csv(out / "per_image.csv", result.per_image, per_image_cols)}
    ours = {"label": label, "source": "this evaluation", "images": n_images, **result.summary}
    rows, published = [ours], [False]
    if paper_rows:
        for p in published_rows(paper_rows):
            rows.append({"label": p.label, "source": p.source, **p.values})
            published.append(True)
    files["summary_csv"] = write_csv(
        out / "summary.csv", rows, ["label", "source", "images", *result.metrics]
    )
    md = [
        f"# fidesr-eval: {label}",
        "",
        *(f"- {c}" for c in context),
        f"- images: {n_images}",
        "",
        markdown_table(rows, ["label"], result.metrics, published=published),
        "",
    ]
    if paper_rows:
        md += ["Published rows: " + "; ".join(f"{r['label']}: {r['source']}" for r in rows[1:]), ""]
    files["summary_md"] = out / "summary.md"
    atomic_write_text(files["summary_md"], "\n".join(md))
    return files


def model_spec(cfg: DictConfig) -> str | None:
    """The model of checkpoint mode: ``checkpoint`` (a released name or a location), else the released
    ``fidesr`` when LQ images are given without SR images; None: folder mode. (Not a key ``model``: Hydra
    reads ``model=...`` as a choice of the training tree's ``conf/model`` group.)"""
    spec = cfg.get("checkpoint")
    if spec is None and cfg.sr_dir is None and cfg.lq_dir is not None:
        spec = DEFAULT_MODEL
    return None if spec is None else str(spec)


def fresh_sr_dir(sr_dir: Path, overwrite: bool) -> Path:
    """Checkpoint mode's SR folder, empty of images so that only this run's are scored: an earlier run's
    are refused (one line naming the folder) unless ``overwrite``, which deletes them (and nothing else)."""
    if sr_dir.exists() and not sr_dir.is_dir():
        raise ConfigValueError(f"{sr_dir} exists and is not a folder; give another output_dir=")
    old = list_images(sr_dir, recursive=True) if sr_dir.is_dir() else []
    if old and not overwrite:
        raise ConfigValueError(
            f"{sr_dir} already holds {len(old)} SR image(s) of an earlier run; nothing was computed "
            "(overwrite=true replaces them; or give another output_dir=)"
        )
    for path in old:
        path.unlink()
    sr_dir.mkdir(parents=True, exist_ok=True)
    return sr_dir


def sr_from_checkpoint(cfg: DictConfig, sr_dir: Path, notes: list[str] | None = None) -> Path:
    """Checkpoint mode: upscale every image of ``cfg.lq_dir`` into ``sr_dir`` with the model that
    ``cfg.checkpoint`` names (any source :meth:`fidesr.pipeline.FiDeSRPipeline.from_pretrained`
    reads: released name, training checkpoint, exported folder, official ``.pkl``, Hub repo id), with the
    precision and tiling options of ``fidesr-upscale``. Unreadable LQ files are listed before the model is
    loaded. ``notes`` receives the lines that describe the model (:func:`fidesr.modelio.released.model_notes`)."""
    if cfg.lq_dir is None:
        raise MissingInputError("checkpoint mode needs lq_dir=DIR")
    if not Path(cfg.lq_dir).is_dir():
        raise MissingInputError(f"lq_dir={cfg.lq_dir}: no such folder")
    lqs = list_images(cfg.lq_dir)
    problems = check_images(lqs, cfg.max_pixels)
    if problems:
        raise ImageCheckError(
            f"{len(problems)} unreadable LQ image(s); nothing was computed:\n  " + "\n  ".join(problems)
        )
    # Here, not at the top: folder mode (and --help) never loads a model, so never imports peft, diffusers
    # and transformers (about 10 s).
    from fidesr.pipeline import FiDeSRPipeline

    pipe = FiDeSRPipeline.from_pretrained(
        model_spec(cfg) or "fidesr",
        pretrained=cfg.pretrained,
        device=resolve_device(cfg.device),
        dtype=cfg.precision,
        unsafe_pickle=cfg.unsafe_pickle,
        tile_size=cfg.tile_size or None,
        tile_overlap=cfg.tile_overlap,
        vae_tiling=cfg.vae_tiling,
    )
    if notes is not None:
        notes.extend(model_notes(pipe))
    lfim = cfg.get("lfim") or {}
    # LFIM strengths per call (None: the checkpoint's own), and a seeded VAE sample per image, so that the
    # jobs of an LFIM sweep differ only in the strengths.
    # PiSA-SR's LoRA-set strengths (two-set models only; null: 1, the merged model).
    lora = cfg.get("lora_strengths") or {}
    call = {
        "lf_scale": lfim.get("lf_scale"),
        "hf_scale": lfim.get("hf_scale"),
        "strengths": pisasr_strengths(lora.get("lambda_pix"), lora.get("lambda_sem")),
    }
    # fidesr-upscale's loop, one image at a time with seed 0: what `fidesr-upscale --seed 0` writes.
    upscaler = Upscaler(pipe, seed=0, max_pixels=cfg.max_pixels, call=call, progress=cfg.progress)
    upscaler.run([(lq_path, sr_dir / f"{lq_path.stem}.png") for lq_path in lqs])
    for lq_path, err in upscaler.errors:  # no black PNG, no missing image scored as a result
        if isinstance(err, NonFiniteOutputError):
            raise NonFiniteOutputError(f"{lq_path}: {err}", err.indices) from None
    if upscaler.errors:
        raise ImageCheckError(
            f"{len(upscaler.errors)} LQ image(s) failed; nothing was scored:\n  "
            + "\n  ".join(f"{name}: {why}" for name, why in upscaler.failed)
        )
    return sr_dir


#: Numeric keys and their lower bounds (None: any finite number), checked before any weight, image or model.
_BOUNDS: dict[str, float | None] = {
    "tile_size": 0,
    "tile_overlap": 0,
    "batch_size": 1,
    "num_workers": 0,
    "max_pixels": 1,
    "lfim.lf_scale": 0,
    "lfim.hf_scale": 0,
    "lora_strengths.lambda_pix": None,
    "lora_strengths.lambda_sem": None,
}


def protocol_options(cfg: DictConfig) -> ProtocolOptions:
    """The ``protocol`` node (``conf/protocol/default.yaml``) as the built options; a bad value is one line
    naming its key."""
    node = OmegaConf.to_container(cfg.protocol, resolve=True) if cfg.get("protocol") is not None else {}
    node.pop("_target_", None)
    try:
        return ProtocolOptions(**node)
    except TypeError as err:  # an unknown key
        raise ConfigValueError(f"protocol: {err}") from None
    except ValueError as err:
        raise ConfigValueError(str(err)) from None


def check_options(cfg: DictConfig) -> None:
    """Refuse out-of-range or non-finite numbers (``tile_size=-5``, ``lfim.lf_scale=inf``) with one line
    naming the key, before anything is loaded. ``null`` (the model's own value) passes."""
    for key, low in _BOUNDS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        want = "a finite number" + (f" >= {low:g}" if low is not None else "")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigValueError(f"{key}={value!r}: must be {want}")
        if not math.isfinite(value) or (low is not None and value < low):
            raise ConfigValueError(f"{key}={value}: must be {want}")
    for key in ("overwrite", "unsafe_pickle", "vae_tiling", "progress"):
        if not isinstance(cfg.get(key), bool):
            raise ConfigValueError(f"{key}={cfg.get(key)!r}: must be true or false")
    protocol_options(cfg)
    if cfg.tile_size and cfg.tile_overlap >= cfg.tile_size:
        raise ConfigValueError(
            f"tile_overlap={cfg.tile_overlap} must be smaller than tile_size={cfg.tile_size} (or tile_size=0)"
        )


def run(cfg: DictConfig) -> EvalResult:
    """The app without Hydra's wrapper (tests call it with a composed config)."""
    check_options(cfg)
    out = Path(cfg.output_dir)
    if cfg.get("test_set"):  # a set name (fidesr-data download) or a folder with lq/ + gt/
        found = resolve_set(cfg.test_set)
        cfg.lq_dir, cfg.gt_dir = cfg.lq_dir or str(found.lq), cfg.gt_dir or str(found.gt)
        if cfg.paper_rows is None and canonical_set(cfg.test_set) in PUBLISHED:
            cfg.paper_rows = canonical_set(cfg.test_set)
    checkpoint_mode = model_spec(cfg) is not None
    if checkpoint_mode:  # an earlier run's images refused before anything is fetched or loaded
        fresh_sr_dir(out / "sr", cfg.overwrite)
    # Before any image is produced or read: the metrics' weight files, fetched when online (required
    # metrics must then be complete; optional ones without files are reported as skipped).
    W.ensure_run_weights(OmegaConf.to_container(cfg.metrics, resolve=True), cfg.weights_dir, log=log.info)
    notes: list[str] = []
    if checkpoint_mode:
        sr_dir = sr_from_checkpoint(cfg, out / "sr", notes)
    elif cfg.sr_dir is None:
        raise MissingInputError(
            "give sr_dir=DIR (folder mode) or checkpoint=NAME_OR_PATH lq_dir=DIR (checkpoint mode)"
        )
    else:
        sr_dir = Path(cfg.sr_dir)
    result = evaluate_folders(
        sr_dir,
        cfg.gt_dir,
        out,
        OmegaConf.to_container(cfg.metrics, resolve=True),
        label=cfg.label,
        paper_rows=cfg.paper_rows,
        protocol=protocol_options(cfg),
        weights_dir=cfg.weights_dir,
        device=cfg.device,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        progress=cfg.progress,
        max_pixels=cfg.max_pixels,
        notes=notes,
    )
    print(result.files["summary_md"].read_text())
    log.info("wrote %s", ", ".join(str(p) for p in result.files.values()))
    return result


@hydra.main(config_path="pkg://fidesr.conf", config_name="eval", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    use_job_dir(cfg, "output_dir")  # each sweep job writes into its own folder
    # The user's input errors are one line (the traceback with HYDRA_FULL_ERROR=1).
    report_errors("fidesr-eval", lambda: run(cfg), advice=EVAL_ADVICE)


def main() -> None:
    """Entry point (``fidesr-eval``): the Hydra app, its own files' full disk reported as one line."""
    run_hydra("fidesr-eval", _hydra_main)


if __name__ == "__main__":
    main()
