"""Model specs to loadable sources: released names, local files and folders, Hub repo ids.

A small version (what ``fidesr-benchmark``'s pre-flight needs): released names are fetched from the Hub
into the Hugging Face cache (``huggingface_hub``), local paths pass through, Hub repo ids are checked to
be reachable or cached. What cannot be found now raises :class:`ReleasedModelMissingError`, one line naming
what is missing and the command that fetches it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fidesr.errors import FidesrError

#: name -> (Hub repo, file) of the released weights on the Hub.
HUB_RELEASES = {
    "fidesr": ("jmjin2/FiDeSR", "fidesr.pkl"),
    "osediff": ("Guaishou74851/AdcSR", "osediff.pkl"),
}
PISASR_PAGE = "PiSA-SR's Google Drive (the link in the csslc/PiSA-SR README)"


class ReleasedModelMissingError(FidesrError, FileNotFoundError):
    """A model is neither on disk nor in the Hugging Face cache, and cannot be fetched now."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("FIDESR_OFFLINE", "HF_HUB_OFFLINE")
    )


def locate_model(spec: str) -> str:
    """Resolve a model spec — a released name ('fidesr', 'osediff', 'pisasr'), a training checkpoint, an exported
    folder, an official .pkl, or a Hub repo id — to what FiDeSRPipeline.from_pretrained accepts, fetching released
    files into the HF cache when online. Raises a FidesrError subclass whose one-line message names what is missing
    and the command that fetches it, when offline or unreachable."""
    from fidesr.model_files import _REPO_ID

    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    key = str(spec).strip().lower()
    if key == "pisasr":
        raise ReleasedModelMissingError(
            f"model 'pisasr': pisa_sr.pkl is on {PISASR_PAGE} only; download it and pass its path"
        )
    if key in HUB_RELEASES:
        repo, filename = HUB_RELEASES[key]
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return hit
        how = f"`hf download {repo} {filename}` on a machine with network (into the Hugging Face cache)"
        if _offline():
            raise ReleasedModelMissingError(
                f"model {key!r}: {repo} {filename} is not in the Hugging Face cache "
                f"(offline); fetch it with {how}"
            )
        try:
            return hf_hub_download(repo, filename, endpoint=os.environ.get("HF_ENDPOINT") or None)
        except Exception as err:  # noqa: BLE001 (every Hub/network failure becomes the one-line message)
            raise ReleasedModelMissingError(
                f"model {key!r}: cannot fetch {repo} {filename} ({type(err).__name__}); fetch it with {how}"
            ) from None
    if _REPO_ID.match(str(spec)) and not str(spec).startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        if _offline() and not isinstance(try_to_load_from_cache(str(spec), "config.json"), str):
            raise ReleasedModelMissingError(
                f"model {spec!r}: not in the Hugging Face cache (offline); fetch it with `hf download {spec}`"
            )
        return str(spec)
    raise ReleasedModelMissingError(
        f"model {spec!r}: no such file or folder, not a released name (fidesr, osediff, pisasr), "
        "and not a Hub repo id USER/NAME"
    )
