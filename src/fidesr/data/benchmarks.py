"""The standard test sets by name: StableSR's RealSR, DRealSR and DIV2K-Val crops (LQ 128 -> GT 512).

``fidesr-data download realsr drealsr div2k_val`` fetches StableSR's archive (the Hub dataset
``Iceclear/StableSR-TestSets``, file ``StableSR_testsets.zip``, S-Lab licence, non-commercial) with
huggingface_hub into the Hugging Face cache, or takes it from a mirror (a folder holding the zip, or a
base URL), checks it (a valid zip whose CRCs match; no member that is absolute, climbs out with ``..``,
or is a symbolic link or other special file), and unpacks each set atomically into
``<data dir>/benchmarks/<set>/{lq,gt}`` (flat, LQ and GT paired by file stem), checking its pair count.

The data directory follows ``conf/paths`` (``paths.data_dir``): ``$FIDESR_DATA_DIR``, else
``$FIDESR_ROOT/data``, else ``./data``. Wherever a test set is given (``fidesr-eval``, ``fidesr-benchmark``,
``data.test_sets``), :func:`resolve_set` accepts a set name or a folder holding ``lq/`` + ``gt/`` (or
StableSR's ``test_LR/`` + ``test_HR/``).

Inside the archive each set is a folder named as StableSR names it (``RealSRVal_crop128``,
``DrealSRVal_crop128``, ``DIV2K_V2_val``) at any depth, holding an LQ and a GT sub-folder under any of the
names in :data:`LQ_NAMES` / :data:`GT_NAMES`: the layout is detected, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fidesr.data.imageio import is_image_file, list_images
from fidesr.errors import FidesrError, MissingInputError
from fidesr.files import atomic_write
from fidesr.weights.fetch import OFFLINE_ENVS, FetchError, download_to

HUB_REPO = "Iceclear/StableSR-TestSets"
HUB_FILE = "StableSR_testsets.zip"
HUB_REPO_TYPE = "dataset"
ARCHIVE_MAX_BYTES = 8 << 30  # the archive is about 3 GB; a mirror sending more is stopped there
DATA_ENV = "FIDESR_DATA_DIR"
MARKER = ".fidesr-set.json"  # written last into an unpacked set: its presence means "complete"
LICENCE = (
    "StableSR's test sets (Hub dataset Iceclear/StableSR-TestSets) come under StableSR's S-Lab License 1.0: "
    "non-commercial use only; the images stem from RealSR, DRealSR and DIV2K, each with its own terms. "
    "Read them at https://huggingface.co/datasets/Iceclear/StableSR-TestSets before use."
)
LQ_NAMES = ("lq", "test_lr", "lr", "lq_128")
GT_NAMES = ("gt", "test_hr", "hr", "gt_512")


@dataclass(frozen=True)
class BenchmarkSet:
    """One standard test set: its name, title, pair count and the folder names StableSR's archive uses."""

    name: str
    title: str
    pairs: int
    folders: tuple[str, ...]


SETS: dict[str, BenchmarkSet] = {
    s.name: s
    for s in (
        BenchmarkSet("realsr", "RealSR", 100, ("RealSRVal_crop128", "RealSR")),
        BenchmarkSet("drealsr", "DRealSR", 93, ("DrealSRVal_crop128", "DRealSRVal_crop128", "DRealSR")),
        BenchmarkSet("div2k_val", "DIV2K-Val", 3000, ("DIV2K_V2_val", "DIV2K_val", "DIV2K-Val")),
    )
}


class BenchmarkDataError(FidesrError, ValueError):
    """A test-set archive or folder is not what it should be (unsafe member, wrong pair count, ...)."""


class SetMissingError(FidesrError, FileNotFoundError):
    """A named test set is not unpacked here and cannot be fetched now; the message names the command."""


@dataclass(frozen=True)
class PairedSet:
    """A resolved test set: a label, its LQ and GT folders."""

    name: str
    lq: Path
    gt: Path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` > ``$FIDESR_DATA_DIR`` > ``$FIDESR_ROOT/data`` > ``./data`` (``paths.data_dir``'s rule)."""
    raw = explicit or os.environ.get(DATA_ENV) or Path(os.environ.get("FIDESR_ROOT") or ".") / "data"
    return Path(raw).expanduser().resolve()


def benchmarks_dir(explicit: str | os.PathLike | None = None) -> Path:
    return data_dir(explicit) / "benchmarks"


def canonical_set(name: str) -> str | None:
    """The registered name of ``name`` (case, ``-`` and StableSR's folder names accepted), else None."""
    key = str(name).strip().lower().replace("-", "_")
    for s in SETS.values():
        if key == s.name or key in (f.lower().replace("-", "_") for f in s.folders):
            return s.name
    return None


def download_command(names: Iterable[str]) -> str:
    return "fidesr-data download " + " ".join(names)


def pair_folders(folder: str | os.PathLike) -> tuple[Path, Path] | None:
    """The (LQ, GT) sub-folders of ``folder`` (``lq/`` + ``gt/``, ``test_LR/`` + ``test_HR/``, ...), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    subs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    lq = next((subs[n] for n in LQ_NAMES if n in subs), None)
    gt = next((subs[n] for n in GT_NAMES if n in subs), None)
    return (lq, gt) if lq is not None and gt is not None else None


def installed(name: str, root: str | os.PathLike | None = None) -> PairedSet | None:
    """The unpacked set ``name`` (complete: its marker is there), or None."""
    folder = benchmarks_dir(root) / name
    if not (folder / MARKER).is_file():
        return None
    return PairedSet(name, folder / "lq", folder / "gt")


def resolve_set(spec: str | os.PathLike, root: str | os.PathLike | None = None) -> PairedSet:
    """A set name (unpacked by ``fidesr-data download``) or a folder holding LQ and GT sub-folders.

    Raises:
        SetMissingError: a known name not unpacked yet (the message names the command that fetches it).
        MissingInputError: neither a known name nor a folder with LQ/GT sub-folders.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        pair = pair_folders(path)
        if pair is None:
            raise MissingInputError(
                f"test set folder {path}: expected sub-folders lq/ and gt/ (or test_LR/ and test_HR/)"
            )
        return PairedSet(path.name, *pair)
    name = canonical_set(str(spec))
    if name is None:
        raise MissingInputError(f"test set {spec!r}: no such folder, and not a known set ({', '.join(SETS)})")
    found = installed(name, root)
    if found is None:
        raise SetMissingError(
            f"test set {name!r} is not in {benchmarks_dir(root)}: `{download_command([name])}` fetches "
            f"the StableSR test sets ({HUB_REPO}, {HUB_FILE})"
        )
    return found


def named_sets(sets: Mapping[str, Mapping | str] | Iterable[str] | None) -> dict[str, dict | str]:
    """``data.val_sets`` / ``data.test_sets`` as ``{name: {lq, gt, ...} or a set name / folder}``; a list of
    names or folders becomes ``{its name: it}``. Names are resolved later (:func:`set_folders`)."""
    if not sets:
        return {}
    if isinstance(sets, Mapping):
        return {str(k): v if isinstance(v, str) else dict(v) for k, v in sets.items()}
    return {canonical_set(str(v)) or Path(str(v)).name: str(v) for v in sets}


def set_folders(entry: Mapping | str, root: str | os.PathLike | None = None) -> dict:
    """The ``{lq, gt, ...}`` of one named-set entry (a set name or folder is resolved here)."""
    if isinstance(entry, str):
        found = resolve_set(entry, root)
        return {"lq": str(found.lq), "gt": str(found.gt)}
    return dict(entry)


def status(root: str | os.PathLike | None = None) -> list[dict[str, object]]:
    """One row per registered set: name, present, pairs, path."""
    rows = []
    for s in SETS.values():
        found = installed(s.name, root)
        pairs = json.loads((benchmarks_dir(root) / s.name / MARKER).read_text())["pairs"] if found else 0
        rows.append(
            {
                "name": s.name,
                "present": found is not None,
                "pairs": pairs,
                "expected": s.pairs,
                "path": benchmarks_dir(root) / s.name,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------------------


def _offline() -> str | None:
    for env in OFFLINE_ENVS:
        if os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"${env}={os.environ[env]}"
    return None


def cached_archive() -> Path | None:
    """The archive if it is in the Hugging Face cache already (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(HUB_REPO, HUB_FILE, repo_type=HUB_REPO_TYPE)
    return Path(hit) if isinstance(hit, str) else None


def fetch_archive(
    mirror: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """StableSR's archive on disk: from ``mirror`` (a folder holding it, or a base URL), else the HF cache,
    else downloaded from the Hub by huggingface_hub (``$HF_ENDPOINT`` honoured)."""
    if mirror:
        mirror = str(mirror)
        if "://" not in mirror:
            path = Path(mirror).expanduser() / HUB_FILE
            if not path.is_file():
                raise MissingInputError(f"--mirror {mirror}: no {HUB_FILE} in that folder")
            return path
        dest = benchmarks_dir(root) / ".downloads" / HUB_FILE
        url = f"{mirror.rstrip('/')}/{HUB_FILE}"
        log(f"fetching {url}")
        try:
            with atomic_write(dest) as fh:
                download_to(url, fh, HUB_FILE, max_bytes=ARCHIVE_MAX_BYTES, progress=None)
        except FetchError as err:
            raise BenchmarkDataError(f"cannot fetch the test sets from the mirror: {err}") from None
        return dest
    if (hit := cached_archive()) is not None:
        return hit
    if reason := _offline():
        raise SetMissingError(
            f"the StableSR test sets ({HUB_REPO}, {HUB_FILE}) are not in the Hugging Face cache and fetching "
            f"is off ({reason}): run `fidesr-data download ...` on a machine with network, or pass --mirror"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    log(f"fetching {HUB_FILE} from the Hub dataset {HUB_REPO} (about 3 GB)")
    try:
        return Path(
            hf_hub_download(
                HUB_REPO, HUB_FILE, repo_type=HUB_REPO_TYPE, endpoint=os.environ.get("HF_ENDPOINT") or None
            )
        )
    except LocalEntryNotFoundError as err:
        raise SetMissingError(
            f"cannot reach the Hub for {HUB_REPO} ({HUB_FILE}); offline? Pass --mirror DIR_OR_URL ({err})"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise BenchmarkDataError(f"cannot fetch {HUB_REPO}/{HUB_FILE}: {err}") from None


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be unpacked (zip-slip, links, devices), else None."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        return f"{name!r} points outside the target folder"
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when the archiver stored none
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"{name!r} is a symbolic link or special file"
    return None


def check_archive(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse the whole archive if any member is unsafe, or any stored CRC does not match its data."""
    problems = [p for info in archive.infolist() if (p := _member_problem(info))]
    if problems:
        raise BenchmarkDataError(
            f"{path}: refused, {len(problems)} unsafe member(s): " + "; ".join(problems[:5])
        )
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise BenchmarkDataError(f"{path}: corrupt archive ({err}); delete it and download again") from None
    if bad is not None:
        raise BenchmarkDataError(f"{path}: member {bad!r} fails its CRC; delete the file and download again")


def _locate(names: list[str], s: BenchmarkSet) -> tuple[str, str] | None:
    """The archive folders (LQ, GT) of set ``s``: a folder named as StableSR names the set, at any depth,
    with an LQ and a GT child folder."""
    wanted = {f.lower() for f in s.folders}
    dirs = {str(PurePosixPath(n).parent) for n in names}
    for d in sorted(dirs, key=len):
        p = PurePosixPath(d)
        if p.parent.name.lower() in wanted:
            kind = p.name.lower()
            if kind in LQ_NAMES:
                base = p.parent
                gt = next((str(base / c) for c in _children(dirs, base) if c.lower() in GT_NAMES), None)
                if gt is not None:
                    return d, gt
    return None


def _children(dirs: set[str], base: PurePosixPath) -> list[str]:
    return sorted({PurePosixPath(d).name for d in dirs if PurePosixPath(d).parent == base})


def unpack(
    archive_path: str | os.PathLike,
    names: Iterable[str],
    root: str | os.PathLike | None = None,
    *,
    expected_pairs: Mapping[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, PairedSet]:
    """Unpack the sets ``names`` from StableSR's archive into ``<data dir>/benchmarks/<set>/{lq,gt}``.

    Each set is written into a temporary folder beside its destination, checked (LQ/GT stems pair up, the
    pair count is ``expected_pairs`` or the registered one), and renamed into place only then: an
    interrupted or refused unpack leaves no half set under the final name.
    """
    path = Path(archive_path)
    dest_root = benchmarks_dir(root)
    dest_root.mkdir(parents=True, exist_ok=True)
    out: dict[str, PairedSet] = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise BenchmarkDataError(f"{path}: not a zip archive ({err})") from None
    with zf:
        check_archive(zf, path)
        files = [i for i in zf.infolist() if not i.is_dir()]
        names_in = [i.filename.replace("\\", "/") for i in files]
        for name in names:
            s = SETS[name]
            where = _locate(names_in, s)
            if where is None:
                tops = sorted({n.split("/")[0] for n in names_in})[:10]
                raise BenchmarkDataError(
                    f"{path}: no folder {' / '.join(s.folders)} with LQ and GT sub-folders for {name!r} "
                    f"(top-level entries: {tops})"
                )
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=dest_root))
            try:
                for kind, folder in zip(("lq", "gt"), where, strict=True):
                    (tmp / kind).mkdir()
                    for info, n in zip(files, names_in, strict=True):
                        if str(PurePosixPath(n).parent) == folder and is_image_file(n):
                            with zf.open(info) as src, open(tmp / kind / PurePosixPath(n).name, "wb") as dst:
                                shutil.copyfileobj(src, dst, 1 << 20)
                pairs = _check_pairs(tmp, name, (expected_pairs or {}).get(name, s.pairs))
                (tmp / MARKER).write_text(json.dumps({"set": name, "pairs": pairs, "archive": path.name}))
                final = dest_root / name
                if final.exists():
                    old = final.with_name(f".{name}.old")
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"unpacked  {name}: {pairs} pairs -> {final}")
            out[name] = PairedSet(name, final / "lq", final / "gt")
    return out


def _check_pairs(folder: Path, name: str, expected: int) -> int:
    lq = {p.stem for p in list_images(folder / "lq")}
    gt = {p.stem for p in list_images(folder / "gt")}
    if lq != gt:
        only_lq, only_gt = sorted(lq - gt)[:5], sorted(gt - lq)[:5]
        raise BenchmarkDataError(f"set {name!r}: LQ/GT stems differ: only LQ {only_lq}, only GT {only_gt}")
    if len(lq) != expected:
        raise BenchmarkDataError(f"set {name!r}: {len(lq)} pairs in the archive, expected {expected}")
    return len(lq)


def download(
    names: Iterable[str],
    *,
    mirror: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    expected_pairs: Mapping[str, int] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, PairedSet]:
    """Make the sets ``names`` present (fetch the archive once if any is missing); shows the licence first."""
    wanted = []
    for n in names:
        c = canonical_set(n)
        if c is None:
            raise MissingInputError(f"unknown test set {n!r}; known: {', '.join(SETS)}")
        if c not in wanted:
            wanted.append(c)
    out = {n: found for n in wanted if not force and (found := installed(n, root)) is not None}
    for n in out:
        log(f"ok        {n}: {out[n].lq.parent}")
    todo = [n for n in wanted if n not in out]
    if todo:
        log(f"Licence: {LICENCE}")
        archive = fetch_archive(mirror, root, log=log)
        out.update(unpack(archive, todo, root, expected_pairs=expected_pairs, log=log))
    return {n: out[n] for n in wanted}
