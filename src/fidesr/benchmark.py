"""``fidesr-benchmark``: every model on every test set with the protocol's metrics, in one table.

For each model x set the SR images are written once, into ``OUT/<model>/<set>/sr/<stem>.png``, and scored
from the saved 8-bit files (as the published tables were) with :class:`fidesr.metrics.MetricSuite`
(DESIGN section 3; FID folder against folder). ``OUT/<model>/<set>/per_image.csv`` keeps the scores; a
re-run skips images already written and scored and an interrupted run resumes where it stopped (images
written but not scored are scored, not produced again). ``run.json`` beside it keeps the generation time,
so ``seconds_per_image`` survives re-runs.

Outputs: ``OUT/table.csv`` (model, set, n_images, one column per metric, seconds_per_image, device),
``OUT/table.md`` (our rows, then the published rows of each standard set in a separate block) and
``OUT/perception_distortion.png``.

Before any work, a pre-flight resolves every model (:func:`fidesr.modelio.released.locate_model`), every set
(:func:`fidesr.data.benchmarks.resolve_set`, downloading missing standard sets when online) and the
metrics' weight files (:func:`fidesr.weights.ensure_run_weights`); whatever is still missing is
listed in one :class:`BenchmarkPreflightError` with the command that fetches each thing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fidesr import weights as W
from fidesr.data import benchmarks as B
from fidesr.errors import FidesrError, MissingInputError
from fidesr.files import atomic_write_text
from fidesr.metrics.images import list_images, read_for_metrics, save_image
from fidesr.metrics.published import PUBLISHED
from fidesr.metrics.suite import MetricSuite
from fidesr.metrics.tables import markdown_table, read_csv, write_csv
from fidesr.modelio.released import locate_model
from fidesr.protocol import PROTOCOL, canonical_name
from fidesr.report.plots import plot_perception_distortion

log = logging.getLogger(__name__)

DEFAULT_METRICS = tuple(PROTOCOL)  # psnr ssim lpips dists fid niqe musiq maniqa clipiqa
SAVE_EVERY = 20  # per_image.csv is rewritten every this many images (and at the end): resumable


class BenchmarkPreflightError(FidesrError, RuntimeError):
    """Models, sets or metric weights are missing and cannot be fetched now; nothing was run."""


@dataclass
class ModelPlan:
    """A model of the benchmark: what the user gave, its table label, what the loader reads."""

    spec: str
    label: str
    source: str


@dataclass
class BenchmarkOptions:
    """Loader and metric options shared by every model x set."""

    metrics: Sequence[str] = DEFAULT_METRICS
    device: str = "auto"
    precision: str = "auto"
    pretrained: str | None = None
    tile_size: int | None = 96
    tile_overlap: int = 32
    weights_dir: str | None = None
    data_dir: str | None = None
    mirror: str | None = None
    unsafe_pickle: bool = False
    progress: bool = True
    loader: dict[str, Any] = field(default_factory=dict)  # extra FiDeSRPipeline.from_pretrained options


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def model_label(spec: str) -> str:
    """Table label / folder of a model: a released name as is, a file its stem, a folder its name."""
    path = Path(spec).expanduser()
    if path.exists():
        return _slug(path.stem if path.is_file() else path.name)
    return _slug(spec.replace("/", "_"))


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}_{seen[lab]}")
    return out


# --------------------------------------------------------------------------------------------------
# Pre-flight
# --------------------------------------------------------------------------------------------------


def preflight(
    models: Sequence[str], sets: Sequence[str], opts: BenchmarkOptions, *, say: Callable[[str], None] = print
) -> tuple[list[ModelPlan], list[B.PairedSet], list[str]]:
    """Resolve (and, online, fetch) every model, set and metric weight file; list all that is missing.

    Returns the models, the sets and the canonical metric names.
    """
    if not models or not sets:
        raise MissingInputError("give at least one model (--models) and one test set (--sets)")
    metrics = [canonical_name(m) for m in opts.metrics]
    missing: list[str] = []
    weights_missing: list[str] = []  # listed last: the longest entry
    try:  # every selected metric is required: a benchmark table with silent n/a columns helps no one
        W.ensure_run_weights({m: {"required": True} for m in metrics}, opts.weights_dir, log=say)
    except FidesrError as err:
        weights_missing.append(f"metric weights: {err}")
    plans: list[ModelPlan] = []
    for spec, label in zip(models, _unique([model_label(m) for m in models]), strict=True):
        try:
            plans.append(ModelPlan(spec, label, locate_model(spec)))
        except FidesrError as err:
            missing.append(str(err))
    resolved: list[B.PairedSet] = []
    to_fetch: list[str] = []
    for spec in sets:
        try:
            resolved.append(B.resolve_set(spec, opts.data_dir))
        except B.SetMissingError:
            to_fetch.append(B.canonical_set(spec) or spec)
        except FidesrError as err:
            missing.append(str(err))
    if to_fetch and (missing or weights_missing):  # the run stops anyway: no 3 GB download first
        missing.append(_sets_line(to_fetch, "not unpacked here"))
    elif to_fetch:
        try:
            B.download(to_fetch, mirror=opts.mirror, root=opts.data_dir, log=say)
            resolved = [B.resolve_set(s, opts.data_dir) for s in sets]
        except FidesrError as err:
            missing.append(_sets_line(to_fetch, str(err)))
    # Two sets with one name (two folders called "val") get their own output folders.
    resolved = [
        dataclasses.replace(r, name=n)
        for r, n in zip(resolved, _unique([r.name for r in resolved]), strict=True)
    ]
    missing += weights_missing
    if missing:
        items = ("  - " + m.replace("\n", "\n      ") for m in missing)
        raise BenchmarkPreflightError("nothing was run; missing:\n" + "\n".join(items))
    return plans, resolved, metrics


def _sets_line(names: Sequence[str], why: str) -> str:
    return (
        f"test sets {', '.join(names)} (the StableSR test sets, Hub dataset {B.HUB_REPO}, {B.HUB_FILE}): "
        f"{why}; fetch them with `{B.download_command(names)}`"
    )


# --------------------------------------------------------------------------------------------------
# One model on one set
# --------------------------------------------------------------------------------------------------


def _pairs(s: B.PairedSet) -> list[tuple[str, Path, Path]]:
    lq = {p.stem: p for p in list_images(s.lq)}
    gt = {p.stem: p for p in list_images(s.gt)}
    if not lq or set(lq) != set(gt):
        only = sorted(set(lq) ^ set(gt))[:5]
        raise B.BenchmarkDataError(
            f"test set {s.name} ({s.lq}, {s.gt}): LQ/GT do not pair up {only or '(empty)'}"
        )
    return [(n, lq[n], gt[n]) for n in sorted(lq)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


class _LazyPipeline:
    """Loads the model on first use only: a run where every image is done loads nothing."""

    def __init__(self, plan: ModelPlan, opts: BenchmarkOptions) -> None:
        self.plan, self.opts, self.pipe = plan, opts, None

    def load(self) -> None:
        if self.pipe is None:
            from fidesr.pipeline import FiDeSRPipeline  # peft, transformers (6 s): not for --help or tables

            self.pipe = FiDeSRPipeline.from_pretrained(
                self.plan.source,
                pretrained=self.opts.pretrained,
                device=self.opts.device if self.opts.device != "auto" else None,
                dtype=self.opts.precision,
                unsafe_pickle=self.opts.unsafe_pickle,
                tile_size=self.opts.tile_size or None,
                tile_overlap=self.opts.tile_overlap,
                **self.opts.loader,
            )

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        self.load()
        # As fidesr-eval's checkpoint mode: a seeded VAE sample per image, so re-runs give the same image.
        generator = torch.Generator(device=self.pipe.device).manual_seed(0)
        with torch.no_grad():
            return self.pipe(lq, generator=generator).sr.cpu()

    @property
    def device(self) -> str:
        return str(self.pipe.device) if self.pipe is not None else ""


def run_one(
    plan: ModelPlan,
    s: B.PairedSet,
    suite: Any,
    out: Path,
    pipe: _LazyPipeline,
    progress: bool = True,
) -> dict[str, Any]:
    """SR images and per-image scores of one model on one set (resuming); returns the table row."""
    folder = out / plan.label / s.name
    sr_dir = folder / "sr"
    sr_dir.mkdir(parents=True, exist_ok=True)
    per_image_path, run_path = folder / "per_image.csv", folder / "run.json"
    pairs = _pairs(s)
    per_image_cols = ["name", *suite.active]
    old = {r["name"]: r for r in read_csv(per_image_path)} if per_image_path.is_file() else {}
    rows: dict[str, dict[str, Any]] = {}
    info = _read_json(run_path)
    if info.get("source") not in (None, plan.source):  # another model under the same label: start over
        info, old = {}, {}
        for p in sr_dir.glob("*.png"):
            p.unlink()
    gen_seconds, gen_images = float(info.get("gen_seconds", 0.0)), int(info.get("gen_images", 0))
    generated = 0
    with tqdm(total=len(pairs), desc=f"{plan.label} / {s.name}", unit="img", disable=not progress) as bar:
        for i, (name, lq_path, gt_path) in enumerate(pairs):
            sr_path = sr_dir / f"{name}.png"
            prev = old.get(name)
            if sr_path.is_file() and prev and all(isinstance(prev.get(m), float | int) for m in suite.active):
                rows[name] = prev
                bar.update(1)
                continue
            if not sr_path.is_file():
                pipe.load()  # outside the timing: seconds per image are SR only
                t0 = time.perf_counter()
                sr = pipe(read_for_metrics(lq_path))
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                gen_seconds += time.perf_counter() - t0
                gen_images += 1
                generated += 1
                save_image(sr, sr_path)
            gt = read_for_metrics(gt_path)
            sr_saved = read_for_metrics(sr_path)  # scored as saved: 8-bit, as the published tables
            if sr_saved.shape != gt.shape:
                raise B.BenchmarkDataError(
                    f"{sr_path}: SR {tuple(sr_saved.shape[-2:])} vs GT {tuple(gt.shape[-2:])} ({gt_path}); "
                    "is the set x4 (LQ 128 -> GT 512)?"
                )
            scores = suite.score(sr_saved, gt)
            rows[name] = {"name": name, **{m: float(v[0]) for m, v in scores.items()}}
            bar.update(1)
            if (i + 1) % SAVE_EVERY == 0:
                write_csv(per_image_path, list(rows.values()), per_image_cols)
    write_csv(per_image_path, list(rows.values()), per_image_cols)
    summary: dict[str, Any] = MetricSuite.summarize(rows.values(), suite.active)
    if suite.has_fid:
        stored = info.get("fid")
        if generated == 0 and isinstance(stored, float) and info.get("fid_images") == len(pairs):
            summary[suite.fid_name] = stored
        else:
            summary[suite.fid_name] = suite.fid(sr_dir, s.gt)
        info["fid"], info["fid_images"] = summary[suite.fid_name], len(pairs)
    device = pipe.device or info.get("device", "")
    info.update(
        model=plan.spec,
        source=plan.source,
        set=s.name,
        lq=str(s.lq),
        gt=str(s.gt),
        device=device,
        gen_seconds=gen_seconds,
        gen_images=gen_images,
        generated_this_run=generated,
    )
    _write_json(run_path, info)
    return {
        "model": plan.label,
        "set": s.name,
        "n_images": len(pairs),
        **{m: summary.get(m, suite.skipped.get(m)) for m in suite.names},
        "seconds_per_image": gen_seconds / gen_images if gen_images else None,
        "device": device,
    }


# --------------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------------


def run_benchmark(
    models: Sequence[str],
    sets: Sequence[str],
    output_dir: str | Path,
    opts: BenchmarkOptions | None = None,
    *,
    say: Callable[[str], None] = print,
) -> dict[str, Path]:
    """The benchmark (see the module doc); returns the written files by kind."""
    opts = opts or BenchmarkOptions()
    plans, resolved, metrics = preflight(models, sets, opts, say=say)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite = MetricSuite(metrics, weights_dir=opts.weights_dir, required=metrics, device=opts.device)
    rows = []
    for plan in plans:
        pipe = _LazyPipeline(plan, opts)
        for s in resolved:
            rows.append(run_one(plan, s, suite, out, pipe, progress=opts.progress))
    return write_tables(rows, suite.names, out, resolved)


def write_tables(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], out: Path, sets: Sequence[B.PairedSet]
) -> dict[str, Path]:
    """table.csv, table.md (ours, then the published rows per standard set) and the perception-distortion
    plot (PSNR against the perceptual metrics measured; none without PSNR and one of them)."""
    cols = ["model", "set", "n_images", *metrics, "seconds_per_image", "device"]
    files = {"table_csv": write_csv(out / "table.csv", rows, cols)}
    md = ["# fidesr-benchmark", "", "## This run", ""]
    md.append(markdown_table(rows, ["model", "set", "n_images"], [*metrics, "seconds_per_image", "device"]))
    md += ["", "seconds_per_image: the SR step only (model loading excluded), on `device`."]
    published_points = []
    for s in sets:
        key = B.canonical_set(s.name)
        if key in PUBLISHED:
            pub = PUBLISHED[key]
            md += ["", f"## Published: {B.SETS[key].title} (not computed here)", ""]
            md.append(
                markdown_table(
                    [{"label": p.label, **p.values} for p in pub],
                    ["label"],
                    metrics,
                    published=[True] * len(pub),
                )
            )
            md += ["", "Sources: " + "; ".join(sorted({p.source for p in pub}))]
            published_points += [
                {"configuration": f"{p.label} / {key}", **{m: v for m, v in p.values.items() if m in metrics}}
                for p in pub
            ]
    points = [{"configuration": f"{r['model']} / {r['set']}", **r} for r in rows]
    plot = plot_perception_distortion(points + published_points, out / "perception_distortion.png")
    if plot is not None:
        files["plot"] = plot
        md += ["", f"![perception-distortion]({plot.name})"]
    else:
        md += [
            "",
            "No perception-distortion plot: it needs PSNR and a perceptual metric (lpips, dists, musiq, ...).",
        ]
    files["table_md"] = out / "table.md"
    files["table_md"].write_text("\n".join(md) + "\n")
    return files
