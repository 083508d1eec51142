"""Model files in and out: every source a trained model is read from, the exported folder it is written to.

The one loader of a model for inference is :meth:`fidesr.pipeline.FiDeSRPipeline.from_pretrained`; it
resolves the source with :func:`~fidesr.modelio.released.locate_model`, reads it with
:meth:`~fidesr.modelio.read.TrainedWeights.load` and builds the modules with
:meth:`~fidesr.modelio.read.TrainedWeights.build`.

Modules, each importing only those listed before it (no import cycle):

* :mod:`~fidesr.modelio.layout`: the exported folder's file names and versions, the official keys;
* :mod:`~fidesr.modelio.card`: the model card (``README.md``) of an exported folder;
* :mod:`~fidesr.modelio.write`: the exported folder's atomic writer (``save_pretrained``, ``fidesr-export``);
* :mod:`~fidesr.modelio.layouts`: the official FiDeSR, OSEDiff and PiSA-SR files mapped onto fidesr's
  backbone;
* :mod:`~fidesr.modelio.released`: the released models by name, ``locate_model``, the Hub fetch;
* :mod:`~fidesr.modelio.read`: :class:`~fidesr.modelio.read.TrainedWeights`, checkpoint | exported folder |
  official ``.pkl`` | Hub repo id -> config + tensors -> backbone, LRRB, LFIM.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (PEP 562) rather than here: the command
# lines read the released names (``released``: no torch) while parsing their arguments, before any model
# loads, and importing ``read`` here would bring torch, peft and diffusers along (seconds) to every
# ``--help``. Within this package modules import each other by their own paths, never through this one.
_EXPORTS = {
    **dict.fromkeys(
        (
            "ADAPTER_KEY",
            "CARD_FILE",
            "CONFIG_FILE",
            "EXTRAS_FILE",
            "FOLDER_FORMAT",
            "FOLDER_PATTERNS",
            "FOLDER_VERSION",
            "FOLDER_VERSION_SETS",
            "LORA_FILE",
            "LRRB_FILE",
            "OFFICIAL_KEYS",
            "OFFICIAL_LORA_ALPHA",
        ),
        "layout",
    ),
    **dict.fromkeys(("Exportable", "model_card"), "card"),
    **dict.fromkeys(("clean_stale_exports", "write_folder"), "write"),
    **dict.fromkeys(
        (
            "ReleasedWeights",
            "check_names",
            "layout_of",
            "load_full_weights",
            "read_official",
            "read_released",
        ),
        "layouts",
    ),
    **dict.fromkeys(
        (
            "DEFAULT_MODEL",
            "RELEASED",
            "ReleasedModel",
            "ReleasedModelMissing",
            "fetch_hub_folder",
            "is_repo_id",
            "locate_model",
            "locate_released",
            "model_notes",
            "offline_reason",
        ),
        "released",
    ),
    **dict.fromkeys(("TrainedWeights", "trained_state"), "read"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups are plain attributes
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
