"""The upscale loop: LQ files in, SR PNGs out, with one loaded pipeline.

``fidesr-upscale`` and ``fidesr-eval``'s checkpoint mode both run :class:`Upscaler`, so the images a
checkpoint is scored on are exactly the ones ``fidesr-upscale`` writes: the same reader
(:func:`~fidesr.data.imageio.load_image`: EXIF orientation, 16-bit, alpha, the pixel limit), the same seed
rule (the VAE sample's generator seeded with ``seed`` before every batch), the same per-image failures and
the same atomic writes.

A file that cannot be read, or whose result is not finite, fails alone (recorded in :attr:`Upscaler.failed`,
the rest go on); a full disk stops the loop (:class:`~fidesr.errors.DiskFullError`, the images written
before it kept); other errors of a batch (CUDA out of memory) fail that batch and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fidesr.data.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, save_image
from fidesr.errors import DiskFullError, NonFiniteOutputError

__all__ = ["Upscaler"]

Job = tuple[Path, Path]  # (LQ file, SR file to write)


def _chunks(jobs: Sequence[Job], size: int) -> Iterator[Sequence[Job]]:
    """Consecutive jobs in groups of up to ``size`` (grouped again by image size once loaded)."""
    size = max(1, int(size))
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


class Upscaler:
    """Run a loaded pipeline over ``(LQ file, SR file)`` jobs.

    Args:
        pipe: a loaded :class:`~fidesr.pipeline.FiDeSRPipeline` (any callable with its signature).
        seed: the VAE posterior sample's seed, set before every batch (so a file's result does not depend
            on which files came before it).
        batch_size: files read together; those of equal size run as one batch.
        max_pixels: files above this many pixels are refused (decompression bombs).
        call: per-call pipeline options (``lf_scale``, ``hf_scale``, ``strengths``, ...).
        progress: show a progress bar (on stderr).
        report: called with ``(file, message)`` for every failed file, as it fails.

    After :meth:`run` (also after an interruption): :attr:`written` (the SR files), :attr:`failed`
    (``(file, message)``) and :attr:`errors` (``(file, exception)``, for callers that re-raise).
    """

    def __init__(
        self,
        pipe: Any,
        *,
        seed: int = 0,
        batch_size: int = 1,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        call: Mapping[str, Any] | None = None,
        progress: bool = True,
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.pipe, self.seed, self.batch_size, self.max_pixels = pipe, int(seed), batch_size, max_pixels
        self.call = dict(call or {})
        self.progress, self.report = progress, report
        self.written: list[Path] = []
        self._failures: list[tuple[Path, Exception, str]] = []

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(file, message)`` of every file that failed."""
        return [(str(src), message) for src, _, message in self._failures]

    @property
    def errors(self) -> list[tuple[Path, Exception]]:
        """``(file, exception)`` of every file that failed."""
        return [(src, err) for src, err, _ in self._failures]

    def _fail(self, src: Path, err: Exception, message: str | None = None) -> None:
        message = message or str(err)
        self._failures.append((src, err, message))
        if self.report is not None:
            self.report(str(src), message)

    def run(self, jobs: Sequence[Job]) -> list[Path]:
        """Upscale every job; returns :attr:`written`. Raises :class:`DiskFullError` (naming the file and
        how many were written before it); ``KeyboardInterrupt`` passes through, with no partial file."""
        generator = torch.Generator(device=self.pipe.device)
        with tqdm(total=len(jobs), unit="img", desc="upscale", disable=not self.progress) as bar:
            for chunk in _chunks(jobs, self.batch_size):
                groups: dict[tuple[int, ...], list[tuple[Path, Path, torch.Tensor]]] = {}
                for src, dst in chunk:
                    try:
                        img = load_image(src, self.max_pixels)
                    except ImageLoadError as err:
                        self._fail(src, err)
                        bar.update(1)
                        continue
                    groups.setdefault(tuple(img.shape), []).append((src, dst, img))
                for group in groups.values():
                    self._run_group(group, generator)
                    bar.update(len(group))
        return self.written

    def _run_group(self, group: list[tuple[Path, Path, torch.Tensor]], generator: torch.Generator) -> None:
        try:
            generator.manual_seed(self.seed)
            bad: list[int] = []
            try:
                lq = torch.stack([img for _, _, img in group])
                sr = self.pipe(lq, generator=generator, **self.call).sr.cpu()
            except NonFiniteOutputError as err:  # those images fail (no black PNG); the rest are fine
                sr, bad = err.output.sr.cpu(), err.indices
                for i in bad:
                    self._fail(group[i][0], err)
            for i, ((_, dst, _), image) in enumerate(zip(group, sr, strict=True)):
                if i not in bad:
                    self.written.append(save_image(image, dst))
        except DiskFullError as err:  # the next files would fail alike: stop, keep what is written
            raise DiskFullError(f"{err}; the {len(self.written)} written before it are kept") from err
        except (RuntimeError, ValueError, OSError) as err:  # e.g. CUDA out of memory: the next batch
            for src, _, _ in group:
                self._fail(src, err, f"{type(err).__name__}: {err}")
