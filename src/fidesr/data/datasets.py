"""Datasets: HQ training images (several weighted sources), paired LQ/GT test sets, LQ-only predict sets.

Training samples are a pure function of ``(seed, index)``: the source, the image, the crop, the flip and
the degradation parameters all come from one generator seeded with them. Together with
:class:`StepSampler` this makes resumed and multi-GPU runs draw exactly what one uninterrupted run draws.

Bad files never kill a run: an image that cannot be read is skipped with one warning naming it (the next
candidate of the same index is drawn instead) and counted; a source folder with no usable image fails at
construction, naming the folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from fidesr.data.degradations.ops import luma
from fidesr.data.imageio import ImageLoadError, is_image_file, list_images, load_image
from fidesr.errors import FidesrError
from fidesr.seeding import derive_seed

log = logging.getLogger(__name__)


class DataSourceError(FidesrError, ValueError):
    """A configured data source is unusable (missing folder, no images, unmatched pairs)."""


def read_file_list(source: str | os.PathLike) -> list[Path]:
    """Image paths of a folder (recursive) or of a text file listing one path per line (relative paths are
    relative to the list's folder; blank lines and ``#`` comments ignored)."""
    source = Path(source).expanduser()
    if source.is_dir():
        return list_images(source, recursive=True)
    if source.is_file() and not is_image_file(source):
        lines = [ln.strip() for ln in source.read_text().splitlines()]
        return [
            Path(ln) if Path(ln).is_absolute() else source.parent / ln
            for ln in lines
            if ln and not ln.startswith("#")
        ]
    raise DataSourceError(f"data source does not exist or is not a folder/list: {source}")


@dataclass
class HQSource:
    """One training source: a folder or file list of HQ images with a sampling weight."""

    path: str
    weight: float = 1.0
    name: str | None = None


class BadImageLog:
    """Counts skipped files; warns once per file."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    def report(self, path: Path, err: Exception) -> None:
        if str(path) not in self.skipped:
            log.warning("skipping unreadable image %s: %s", path, err)
        self.skipped[str(path)] = str(err)


class HQImageDataset(Dataset):
    """Random HQ crops (+ horizontal flip, + optional greyscale) with degradation parameters, for training.

    Args:
        sources: folders or file lists with sampling weights (e.g. the paper's DIV2K+Flickr2K+LSDIR+FFHQ mix).
        crop_size: GT crop (512 for SD). Images smaller than the crop are upscaled (bicubic) so that their
            short side equals the crop, then cropped: no padding artefacts, documented in the README.
        length: virtual epoch length in samples (samples are indexed, not enumerated).
        degradation: object with ``sample(generator) -> dict`` (parameters sampled here, on the CPU).
        prompts: callable path -> prompt string (tags); None gives the empty prompt.
        seed: base seed; sample ``i`` uses a generator seeded with ``(seed, i)``.
        max_retries: how many other images an index tries when its image is unreadable.
        gray_prob: probability that a crop is turned grey (BT.601 luma in all three channels), for data
            with greyscale photographs that the training set lacks (the demo validates on 9 grey crops but
            trains on colour photos only). 0 draws nothing, so runs without it are unchanged.

    Returns per item: ``{"gt": [3,crop,crop] in [0,1], "deg": {...}, "prompt": str, "name": str,
    "skipped": int}``.
    """

    def __init__(
        self,
        sources: Sequence[HQSource | Mapping | str],
        crop_size: int = 512,
        length: int = 1_000_000,
        degradation=None,
        prompts: Callable[[Path], str] | None = None,
        seed: int = 123,
        hflip: bool = True,
        max_retries: int = 20,
        gray_prob: float = 0.0,
    ) -> None:
        if not 0.0 <= gray_prob <= 1.0:
            raise DataSourceError(f"gray_prob must lie in [0, 1], got {gray_prob}")
        self.sources = [
            s if isinstance(s, HQSource) else HQSource(**s) if isinstance(s, Mapping) else HQSource(str(s))
            for s in sources
        ]
        if not self.sources:
            raise DataSourceError("no training sources configured (data.train_sources is empty)")
        self.files: list[list[Path]] = []
        for src in self.sources:
            files = read_file_list(src.path)
            if not files:
                raise DataSourceError(f"training source has no image files: {src.path}")
            self.files.append(files)
        weights = torch.tensor([s.weight for s in self.sources], dtype=torch.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise DataSourceError(f"source weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.crop_size, self.length, self.degradation = crop_size, length, degradation
        self.prompts, self.seed, self.hflip, self.max_retries = prompts, seed, hflip, max_retries
        self.gray_prob = float(gray_prob)
        self.bad = BadImageLog()

    def __len__(self) -> int:
        return self.length

    def check_readable(self, probes: int = 64) -> None:
        """Fail before training if a source has no readable image among its first ``probes`` files."""
        for src, files in zip(self.sources, self.files, strict=True):
            for path in files[:probes]:
                try:
                    load_image(path)
                    break
                except ImageLoadError as err:
                    self.bad.report(path, err)
            else:
                raise DataSourceError(
                    f"training source has no readable image (tried {min(probes, len(files))}): {src.path}"
                )

    def _crop(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = self.crop_size
        h, w = img.shape[-2:]
        if min(h, w) < c:
            f = c / min(h, w)
            img = F.interpolate(
                img[None],
                size=(max(c, round(h * f)), max(c, round(w * f))),
                mode="bicubic",
                align_corners=False,
                antialias=False,
            )[0].clamp(0, 1)
            h, w = img.shape[-2:]
        y = int(torch.randint(h - c + 1, (1,), generator=g))
        x = int(torch.randint(w - c + 1, (1,), generator=g))
        img = img[:, y : y + c, x : x + c]
        if self.hflip and bool(torch.rand((), generator=g) < 0.5):
            img = img.flip(-1)
        if self.gray_prob > 0 and bool(torch.rand((), generator=g) < self.gray_prob):
            img = luma(img[None])[0].clamp(0, 1).expand(3, -1, -1)
        return img.contiguous()

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(derive_seed(self.seed, index))
        for attempt in range(self.max_retries + 1):
            s = int(torch.multinomial(self.weights, 1, generator=g))
            path = self.files[s][int(torch.randint(len(self.files[s]), (1,), generator=g))]
            try:
                img = load_image(path)
            except ImageLoadError as err:
                self.bad.report(path, err)
                continue
            item = {
                "gt": self._crop(img, g),
                "prompt": self.prompts(path) if self.prompts else "",
                "name": path.stem,
                "skipped": attempt,  # unreadable files drawn before this one (summed by DataHealth)
            }
            if self.degradation is not None:
                item["deg"] = self.degradation.sample(g)
            return item
        raise DataSourceError(
            f"sample {index}: {self.max_retries + 1} unreadable images in a row; see warnings"
        )


def match_pairs(lq_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(name, lq path, gt path) matched by file stem; a clear error lists unmatched names."""
    lq = {p.stem: p for p in list_images(lq_dir)}
    gt = {p.stem: p for p in list_images(gt_dir)}
    if not lq:
        raise DataSourceError(f"no LQ images in {lq_dir}")
    only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
    if only_lq or only_gt:
        raise DataSourceError(
            f"LQ/GT names do not match ({lq_dir} vs {gt_dir}): only in LQ {only_lq[:10]}"
            f"{'...' if len(only_lq) > 10 else ''}; only in GT {only_gt[:10]}{'...' if len(only_gt) > 10 else ''}"
        )
    return [(name, lq[name], gt[name]) for name in sorted(lq)]


class PairedImageDataset(Dataset):
    """A named test set of LQ/GT pairs matched by file name (RealSR, DRealSR, DIV2K-Val, ...).

    Returns ``{"lq": [3,h,w], "gt": [3,H,W]}`` in [0,1] and ``"name"``. Unreadable pairs are dropped at
    construction with a warning naming them (a test set keeps its remaining pairs).
    """

    def __init__(self, lq: str, gt: str, name: str = "val", limit: int | None = None) -> None:
        self.name = name
        pairs = match_pairs(lq, gt)[:limit] if limit else match_pairs(lq, gt)
        self.pairs = []
        for pair in pairs:
            try:
                load_image(pair[1]), load_image(pair[2])
            except ImageLoadError as err:
                log.warning("test set %r: dropping pair %r: %s", name, pair[0], err)
                continue
            self.pairs.append(pair)
        if not self.pairs:
            raise DataSourceError(f"test set {name!r} has no readable pair ({lq}, {gt})")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, lq, gt = self.pairs[index]
        return {"lq": load_image(lq), "gt": load_image(gt), "name": name}


class LQImageDataset(Dataset):
    """LQ images only (predict / upscale): ``{"lq": [3,h,w] in [0,1], "name": str}``."""

    def __init__(self, lq_dir: str) -> None:
        self.files = read_file_list(lq_dir)
        if not self.files:
            raise DataSourceError(f"no images in {lq_dir}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return {"lq": load_image(self.files[index]), "name": self.files[index].stem}


class StepSampler(Sampler[int]):
    """Indices ``start, start+1, ...`` of a virtual epoch of ``length`` samples, sharded over ranks.

    Sample indices are global: rank ``r`` of ``R`` takes ``i`` with ``i % R == r``, so the union over ranks is
    what one process would take. ``start`` skips what a resumed run has already consumed.

    ``len()`` is this rank's share of the *whole* epoch, ``start`` included: Lightning restores a mid-epoch
    checkpoint's batch index and counts it against the loader's length, so the length must not shrink by
    what was consumed (it did, and a run resumed early in the epoch then ran the same samples twice).
    """

    def __init__(self, length: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.start, self.rank, self.world_size = length, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        first = self.start + self.rank
        return iter(range(first, self.length, self.world_size))

    def __len__(self) -> int:
        return max(0, (self.length - self.rank + self.world_size - 1) // self.world_size)
