"""SRDataModule: HQ training crops with device-side degradation, named paired test sets, predict sets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from fidesr.data.benchmarks import named_sets, set_folders
from fidesr.data.datasets import HQImageDataset, HQSource, LQImageDataset, PairedImageDataset, StepSampler

log = logging.getLogger(__name__)


class SRDataModule(L.LightningDataModule):
    """Paired LQ/HQ data for one-step SR.

    Args:
        train_sources: HQ folders / file lists with weights (``[{path, weight, name}]``); empty for eval only.
        val_sets / test_sets: ``{name: {lq: DIR, gt: DIR, limit: N?}}``, any number of named paired sets; a
            value may also be a set name or a folder with ``lq/`` + ``gt/`` (``{realsr: realsr}``), and the
            whole entry a list of those (``[realsr, drealsr]``), see :func:`fidesr.data.benchmarks.resolve_set`.
        predict_dir: a folder (or list file) of LQ images for ``trainer.predict``.
        degradation: parameters are sampled per sample in the dataset (CPU); the model applies them on the
            device (``FiDeSRModule.on_after_batch_transfer``).
        prompts: callable(path) -> tag string for the training prompts (None: empty prompt).
        crop_size: GT crop size (512 for SD 2.1-base).
        batch_size: per device (the paper: 4 per GPU x 2 GPUs).
        val_batch_size: per device for validation/test/predict (images of one set must share a size to batch).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        seed: base seed of the per-sample generators.
        gray_prob: probability of a greyscale training crop (:class:`HQImageDataset`; 0: none).
    """

    def __init__(
        self,
        train_sources: Sequence[Mapping | str] = (),
        val_sets: Mapping[str, Mapping | str] | Sequence[str] | None = None,
        test_sets: Mapping[str, Mapping | str] | Sequence[str] | None = None,
        predict_dir: str | None = None,
        degradation=None,
        prompts: Callable[[Path], str] | None = None,
        crop_size: int = 512,
        batch_size: int = 4,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 123,
        gray_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.train_sources = [dict(s) if isinstance(s, Mapping) else {"path": str(s)} for s in train_sources]
        self.val_sets = named_sets(val_sets)
        self.test_sets = named_sets(test_sets)
        self.predict_dir, self.degradation, self.prompts = predict_dir, degradation, prompts
        self.crop_size, self.batch_size, self.val_batch_size = crop_size, batch_size, val_batch_size
        self.num_workers, self.pin_memory, self.persistent_workers = (
            num_workers,
            pin_memory,
            persistent_workers,
        )
        self.seed, self.gray_prob = seed, gray_prob
        self.train_set: HQImageDataset | None = None
        self.val_datasets: dict[str, PairedImageDataset] = {}
        self.test_datasets: dict[str, PairedImageDataset] = {}

    @property
    def val_set_names(self) -> list[str]:
        return list(self.val_sets)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_sources and self.train_set is None:
            self.train_set = HQImageDataset(
                [HQSource(**s) for s in self.train_sources],
                crop_size=self.crop_size,
                degradation=self.degradation,
                prompts=self.prompts,
                seed=self.seed,
                gray_prob=self.gray_prob,
            )
            self.train_set.check_readable()
        if stage in (None, "fit", "validate") and not self.val_datasets:
            self.val_datasets = {
                n: PairedImageDataset(name=n, **set_folders(c)) for n, c in self.val_sets.items()
            }
        if stage in (None, "test") and not self.test_datasets:
            self.test_datasets = {
                n: PairedImageDataset(name=n, **set_folders(c)) for n, c in self.test_sets.items()
            }

    def _loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=sampler is not None,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("no training data: set data.train_sources")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        per_step = self.batch_size * world * accumulate
        max_steps = trainer.max_steps if trainer and trainer.max_steps and trainer.max_steps > 0 else 10**7
        # Samples are indexed globally; a resumed run starts after what it already consumed.
        start = (trainer.global_step if trainer else 0) * per_step
        length = max(max_steps * per_step, start + per_step)
        self.train_set.length = length
        return self._loader(self.train_set, self.batch_size, StepSampler(length, start, rank, world))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.val_batch_size) for ds in self.val_datasets.values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.val_batch_size) for ds in self.test_datasets.values()]

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_dir:
            raise RuntimeError("no predict data: set data.predict_dir")
        return self._loader(LQImageDataset(self.predict_dir), self.val_batch_size)
