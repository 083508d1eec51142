"""Prompt providers for training: callables ``path -> str`` (the training dataset calls ``prompts(path)``).

FiDeSR, like PiSA-SR and OSEDiff, trains with the RAM (Recognize Anything) tags of the GT image as the
prompt (DESIGN section 2); inference uses the empty prompt. Running RAM inside the data loader costs a
ViT-L per image and needs its weights in every worker, so the intended path is to precompute the tags once
(``experiments/prompts/precompute_tags.py``) and read them with :class:`FilePrompts`.

=================  =====================================================================================
``EmptyPrompt()``  always ``""`` (the demo, and training without tags)
``FixedPrompt(t)`` always ``t``
``FilePrompts(p)`` a JSON ``{name: tags}`` (tags a string or a list of strings) or a CSV ``name,tags``
                   (header optional); looked up by the image's file stem
``RAMPrompts(...)``  RAM on the fly (needs the ``ram`` package and its weights; clear error otherwise)
=================  =====================================================================================

Hydra configs: ``conf/prompts/{empty,fixed,file,ram}.yaml``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from fidesr.data.imageio import load_image, to_uint8
from fidesr.errors import FidesrError

log = logging.getLogger(__name__)

__all__ = [
    "EmptyPrompt",
    "FilePrompts",
    "FixedPrompt",
    "PromptsError",
    "RAMPrompts",
    "RAMUnavailableError",
    "normalize_tags",
]

RAM_INSTALL = (
    "install the Recognize Anything package (`pip install git+https://github.com/xinyu1205/recognize-anything.git`) "
    "and download its weights (ram_swin_large_14m.pth or ram_plus_swin_large_14m.pth from the xinyu1205 "
    "Hugging Face repositories); its text encoder also needs the `bert-base-uncased` tokenizer in the "
    "Hugging Face cache. Or precompute tags elsewhere and use prompts=file."
)


class PromptsError(FidesrError, KeyError):
    """A prompt could not be provided (unknown image name, unreadable tags file)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class RAMUnavailableError(FidesrError, RuntimeError):
    """The ``ram`` package or its weights are missing."""


def normalize_tags(tags: Any) -> str:
    """Tags as one prompt string: lists joined with ``", "``; RAM's ``" | "`` separators become ``", "``."""
    if tags is None:
        return ""
    if isinstance(tags, (list, tuple)):
        return ", ".join(str(t).strip() for t in tags if str(t).strip())
    return ", ".join(t.strip() for t in str(tags).split(" | ") if t.strip())


def _stem(name: str | os.PathLike) -> str:
    return Path(name).stem if Path(name).suffix else Path(name).name


class EmptyPrompt:
    """The empty prompt for every image."""

    def __call__(self, path: str | os.PathLike) -> str:
        return ""

    def __repr__(self) -> str:
        return "EmptyPrompt()"


class FixedPrompt:
    """The same text for every image (e.g. a quality prompt)."""

    def __init__(self, text: str = "") -> None:
        self.text = str(text)

    def __call__(self, path: str | os.PathLike) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"FixedPrompt({self.text!r})"


class FilePrompts:
    """Per-image tags from a JSON or CSV file, looked up by the image's file stem.

    Args:
        path: ``.json`` with ``{name: tags}`` (names with or without extension; tags a string or a list)
            or ``.csv`` with rows ``name,tags`` (a first row ``name,tags`` is taken as a header).
        missing: ``"error"`` (default: a training image without tags is a data-preparation mistake) or
            ``"empty"`` (use ``""`` and warn once per name).

    The file is read on first use (like the data folders, which the data module reads in ``setup``), so
    a config can be built and checked before the data exists.

    Raises (on first use):
        FileNotFoundError: the file does not exist.
        PromptsError: two names with the same stem and different tags, or an unknown name.
    """

    def __init__(self, path: str | os.PathLike, missing: Literal["error", "empty"] = "error") -> None:
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        self.path, self.missing = Path(path).expanduser(), missing
        self._tags: dict[str, str] | None = None
        self._warned: set[str] = set()

    @property
    def tags(self) -> dict[str, str]:
        """``{stem: tags}``, read from the file once."""
        if self._tags is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"prompts file does not exist: {self.path}")
            self._tags = self._index(self._read(self.path))
        return self._tags

    @staticmethod
    def _read(path: Path) -> list[tuple[str, Any]]:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, Mapping):
                raise PromptsError(
                    f"{path}: expected a JSON object {{name: tags}}, got {type(data).__name__}"
                )
            return list(data.items())
        if path.suffix.lower() in (".csv", ".tsv"):
            with open(path, newline="") as fh:
                rows = [
                    r for r in csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",") if r
                ]
            if rows and [c.strip().lower() for c in rows[0][:2]] == ["name", "tags"]:
                rows = rows[1:]
            bad = [i for i, r in enumerate(rows) if len(r) < 2]
            if bad:
                raise PromptsError(f"{path}: rows must be `name,tags`; row {bad[0] + 1} has one column")
            # Unquoted commas inside the tags split the row: join the rest back.
            return [(r[0], ",".join(r[1:])) for r in rows]
        raise PromptsError(f"{path}: unsupported prompts file type {path.suffix!r} (use .json or .csv)")

    def _index(self, items: list[tuple[str, Any]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, tags in items:
            key, text = _stem(str(name).strip()), normalize_tags(tags)
            if key in out and out[key] != text:
                raise PromptsError(f"{self.path}: two entries for the image stem {key!r} with different tags")
            out[key] = text
        return out

    def __len__(self) -> int:
        return len(self.tags)

    def __call__(self, path: str | os.PathLike) -> str:
        key = _stem(path)
        if key in self.tags:
            return self.tags[key]
        if self.missing == "empty":
            if key not in self._warned:
                self._warned.add(key)
                log.warning("no tags for %s in %s: using the empty prompt", key, self.path)
            return ""
        raise PromptsError(
            f"no tags for image {key!r} (from {path}) in {self.path}, which has {len(self.tags)} entries "
            "(keys are file stems); regenerate the tags for this folder "
            "(experiments/prompts/precompute_tags.py) or set prompts.missing=empty"
        )

    def __repr__(self) -> str:
        entries = f"{len(self._tags)} entries" if self._tags is not None else "not read yet"
        return f"FilePrompts({str(self.path)!r}, {entries})"


def _import_ram(model: str) -> tuple[Any, Any, Any]:
    """(model factory, inference function, transform factory) of the ``ram`` package."""
    try:
        from ram import get_transform, inference_ram
        from ram import models as ram_models
    except ImportError as err:
        raise RAMUnavailableError(
            f"prompts=ram needs the `ram` package, which is not installed ({err}): {RAM_INSTALL}"
        ) from err
    factory = getattr(ram_models, model, None)
    if factory is None:
        raise RAMUnavailableError(f"the installed `ram` package has no model {model!r} (use ram or ram_plus)")
    return factory, inference_ram, get_transform


class RAMPrompts:
    """Tags from the Recognize Anything Model, computed per image (cached per path).

    The package and the weights file are checked at construction (a sweep fails before training, not at
    the first batch); the model itself is loaded on first use and not pickled into data-loader workers
    (each worker loads its own copy: prefer precomputed tags, ``prompts=file``, for real training).

    Args:
        weights: the checkpoint file (``ram_swin_large_14m.pth`` for ``model="ram"``,
            ``ram_plus_swin_large_14m.pth`` for ``"ram_plus"``).
        model: ``"ram"`` (what PiSA-SR / FiDeSR use) or ``"ram_plus"``.
        image_size: RAM's input size (384).
        device: where RAM runs (``"cpu"`` in data-loader workers).

    Raises:
        RAMUnavailableError: ``ram`` is not installed, has no such model, or the weights file is missing.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        model: Literal["ram", "ram_plus"] = "ram",
        image_size: int = 384,
        device: str = "cpu",
    ) -> None:
        self.weights, self.model_name = Path(weights).expanduser(), model
        self.image_size, self.device = image_size, device
        _import_ram(model)
        if not self.weights.is_file():
            raise RAMUnavailableError(f"prompts=ram: RAM weights not found at {self.weights}: {RAM_INSTALL}")
        self._model: Any = None
        self._transform: Any = None
        self._cache: dict[str, str] = {}

    def _load(self) -> None:
        factory, _, get_transform = _import_ram(self.model_name)
        model = factory(pretrained=str(self.weights), image_size=self.image_size, vit="swin_l")
        self._model = model.eval().to(self.device)
        self._transform = get_transform(image_size=self.image_size)

    def tag_image(self, image: Any) -> str:
        """Tags of a PIL image (RGB)."""
        if self._model is None:
            self._load()
        _, inference, _ = _import_ram(self.model_name)
        x = self._transform(image.convert("RGB")).unsqueeze(0).to(self.device)
        with torch.no_grad():
            result = inference(x, self._model)
        return normalize_tags(result[0] if isinstance(result, (list, tuple)) else result)

    def __call__(self, path: str | os.PathLike) -> str:
        key = str(path)
        if key not in self._cache:
            # The project's loader: EXIF orientation, 16-bit, alpha and CMYK handled as in training.
            self._cache[key] = self.tag_image(Image.fromarray(to_uint8(load_image(path))))
        return self._cache[key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = state["_transform"] = None  # workers load their own (the model is not picklable)
        return state

    def __repr__(self) -> str:
        return f"RAMPrompts({self.model_name!r}, weights={str(self.weights)!r})"
