"""The released models by name: ``fidesr``, ``osediff``, ``pisasr``, and :func:`locate_model`, which turns any
model spec into what :meth:`fidesr.pipeline.FiDeSRPipeline.from_pretrained` reads.

=========  =========  ====================================================================================
name       method     where the file comes from
=========  =========  ====================================================================================
fidesr     FiDeSR     ``fidesr.pkl`` in the Hub repo ``jmjin2/FiDeSR`` (the official README), fetched by
                      ``huggingface_hub.hf_hub_download`` into the Hugging Face cache
osediff    OSEDiff    ``weight/pretrained/osediff.pkl`` in the Hub repo ``Guaishou74851/AdcSR`` (AdcSR's
                      README lists it; the origin is cswry/OSEDiff ``preset/models/osediff.pkl``)
pisasr     PiSA-SR    ``pisa_sr.pkl``, on Google Drive only (PiSA-SR's README): fetched by hand, found at
                      ``$FIDESR_PISASR_PATH`` or ``<models dir>/pisa_sr.pkl``
=========  =========  ====================================================================================

The file layouts and how each one is mapped: :mod:`fidesr.modelio.layouts` and docs/released.md.

Offline (``$FIDESR_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1``) only the Hugging Face cache is looked at; a
missing file is one line naming the Hub repo, the file and the command that fetches it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fidesr.errors import MissingInputError, ModelFileError
from fidesr.modelio.layout import FOLDER_PATTERNS

log = logging.getLogger(__name__)

OFFLINE_ENVS = ("FIDESR_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Hub revisions. Not yet pinned to a commit hash: the Hub could not be reached when this was written, so
# the branch is named, in one place. Pin a commit here once known (``hf api`` or the repo's "History"
# page); a user pins one with ``$FIDESR_<NAME>_REVISION`` or ``--revision``.
FIDESR_HUB_REVISION = "main"
OSEDIFF_HUB_REVISION = "main"


class ReleasedModelMissing(MissingInputError):
    """A released model's file is not here and cannot be fetched now; the message names the file, where it
    comes from and the command (or page) that fetches it."""


@dataclass(frozen=True)
class ReleasedModel:
    """One released model: where its file is, and how a user gets it.

    Attributes:
        name: the name given to ``--model``.
        method: the method, as papers name it.
        filename: the file (a path inside ``repo_id`` for Hub files).
        repo_id: the Hugging Face Hub model repo, or None (fetched by hand: see ``page``).
        revision: the Hub revision fetched (overridable: ``$FIDESR_<NAME>_REVISION``).
        page: where to download the file by hand (non-Hub files).
    """

    name: str
    method: str
    filename: str
    repo_id: str | None = None
    revision: str | None = None
    page: str | None = None

    @property
    def revision_env(self) -> str:
        return f"FIDESR_{self.name.upper()}_REVISION"

    def fetch_command(self, revision: str | None = None) -> str:
        """The shell command that puts the file into the Hugging Face cache (Hub files)."""
        rev = revision or self.revision
        return f"hf download {self.repo_id} {self.filename}" + (f" --revision {rev}" if rev != "main" else "")


RELEASED: dict[str, ReleasedModel] = {
    m.name: m
    for m in (
        ReleasedModel("fidesr", "FiDeSR", "fidesr.pkl", "jmjin2/FiDeSR", FIDESR_HUB_REVISION),
        ReleasedModel(
            "osediff", "OSEDiff", "weight/pretrained/osediff.pkl", "Guaishou74851/AdcSR", OSEDIFF_HUB_REVISION
        ),
        ReleasedModel(
            "pisasr",
            "PiSA-SR",
            "pisa_sr.pkl",
            page="https://drive.google.com/drive/folders/1oLetijWNd59xwJE5oU-eXylQBifxWdss",
        ),
    )
}
DEFAULT_MODEL = "fidesr"


def is_repo_id(spec: str) -> bool:
    """Whether ``spec`` reads as a Hugging Face Hub repo id ``user/name`` (not a relative or absolute path)."""
    return bool(_REPO_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def offline_reason() -> str | None:
    """``"$FIDESR_OFFLINE=1"`` (or ``$HF_HUB_OFFLINE``) when fetching is switched off, else None."""
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"${name}={os.environ[name]}"
    return None


def models_dir() -> Path:
    """Where hand-fetched released files are looked for: ``$FIDESR_MODELS_DIR``, else
    ``$FIDESR_CACHE_DIR/models``, else ``~/.cache/fidesr/models``."""
    if os.environ.get("FIDESR_MODELS_DIR"):
        return Path(os.environ["FIDESR_MODELS_DIR"]).expanduser()
    cache = os.environ.get("FIDESR_CACHE_DIR") or Path.home() / ".cache" / "fidesr"
    return Path(cache).expanduser() / "models"


def local_path(model: ReleasedModel) -> Path:
    """The expected location of a hand-fetched file (``$FIDESR_<NAME>_PATH``, else the models dir)."""
    env = os.environ.get(f"FIDESR_{model.name.upper()}_PATH")
    return Path(env).expanduser() if env else models_dir() / Path(model.filename).name


def locate_model(spec: str, *, revision: str | None = None) -> str:
    """Resolve a model spec — a released name ('fidesr', 'osediff', 'pisasr'), a training checkpoint, an exported
    folder, an official .pkl, or a Hub repo id — to what FiDeSRPipeline.from_pretrained accepts, fetching released
    files into the HF cache when online. Raises a FidesrError subclass whose one-line message names what is missing
    (e.g. the Hub repo id and file) and the command that fetches it, when offline (FIDESR_OFFLINE=1 / HF_HUB_OFFLINE=1)
    or unreachable.

    Args:
        spec: the name or location.
        revision: Hub revision (branch, tag, commit) for a released Hub file or a repo id; default the pinned one
            (released) or the repo's main branch.

    Returns:
        a local file or folder path (released names, Hub repo ids: inside the Hugging Face cache). A released
        name wins over a file or folder of that name in the current folder (``./fidesr`` is the folder).
    """
    spec = str(spec)
    if spec in RELEASED:
        return locate_released(RELEASED[spec], revision=revision)
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if is_repo_id(spec):
        return fetch_hub_folder(spec, revision=revision)
    raise MissingInputError(
        f"model not found: {spec} (no such file or folder, not a released model ({', '.join(RELEASED)}), "
        "and not a Hub repo id user/name)"
    )


def locate_released(model: ReleasedModel, revision: str | None = None) -> str:
    """The local path of a released model's file, fetched into the Hugging Face cache when online."""
    if model.repo_id is None:
        path, env = local_path(model), f"FIDESR_{model.name.upper()}_PATH"
        if path.is_file():
            return str(path)
        raise ReleasedModelMissing(
            f"released model {model.name!r} ({model.method}): {path} not found; {model.filename} is on Google "
            f"Drive only: download it by hand from {model.page} (the {model.method} README) to {path} "
            f"(or set ${env}, or pass --model /path/to/{model.filename})"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    rev = revision or os.environ.get(model.revision_env) or model.revision
    offline = offline_reason()
    what = (
        f"released model {model.name!r} ({model.method}): {model.filename} from the Hub repo {model.repo_id}"
    )
    try:
        path = hf_hub_download(
            model.repo_id,
            model.filename,
            revision=rev,
            local_files_only=offline is not None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except LocalEntryNotFoundError as err:
        why = f"fidesr is offline ({offline})" if offline else "the Hub cannot be reached"
        raise ReleasedModelMissing(
            f"{what} (revision {rev}) is not in the Hugging Face cache and {why}; fetch it with "
            f"`{model.fetch_command(rev)}` on a machine with network (the cache is $HF_HOME), then run again"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ReleasedModelMissing(
            f"cannot fetch {what} (revision {rev}): {type(err).__name__}: {first}; "
            f"fetch it by hand with `{model.fetch_command(rev)}`"
        ) from err
    log.info("%s: %s", model.name, path)
    return path


def fetch_hub_folder(repo_id: str, revision: str | None = None) -> str:
    """An exported fidesr folder on the Hub, fetched into (or, offline, found in) the HF cache. Only the
    folder's JSON, safetensors and model card are fetched: nothing that can hold code."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(FOLDER_PATTERNS),
            local_files_only=offline_reason() is not None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except LocalEntryNotFoundError as err:
        raise ModelFileError(
            f"Hub model {repo_id!r} is not in the Hugging Face cache and the Hub cannot be reached (offline?). "
            f"On a machine with network: `hf download {repo_id} --local-dir DIR`, then pass DIR"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ModelFileError(f"cannot fetch Hub model {repo_id!r}: {err}") from err


def model_notes(pipe) -> list[str]:
    """Lines that describe the loaded model for a run's log and tables: its source, and the prompt source
    where the method's own one is not available (OSEDiff's DAPE tags)."""
    weights = getattr(pipe, "weights", None)
    if weights is None:
        return []
    method = weights.info.get("method")
    notes = [f"model: {weights.source}" + (f" ({method})" if method else "")]
    if weights.info.get("prompt_note") and not pipe.prompt:
        notes.append(f"prompt: {weights.info['prompt_note']}")
    return notes
