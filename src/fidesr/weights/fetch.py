"""Fetching weight files: from their source URL or a mirror, with a progress bar, checked, atomic.

- ``fetch_file`` downloads one registered file to a temporary name next to its destination, checks it
  with the registry's checksum (the check ``fidesr-weights status`` makes) and renames it into place, so a
  kill, a dropped connection or a checksum mismatch never leaves a file under the final name. A lock file
  per destination serialises processes fetching the same file; the second finds it done.
- A mirror (``--mirror`` or ``$FIDESR_WEIGHTS_MIRROR``) is a base URL or a local folder holding the files
  by their file names: it replaces everything in each source URL but the file name.
- Offline (``$FIDESR_OFFLINE=1``, ``$HF_HUB_OFFLINE=1``, or no route to the server) nothing is fetched and
  ``ensure_weights`` raises one error listing every missing file and the command that fetches them. A
  mirror is the offline path itself, so a configured mirror is used whatever the offline flags say.
"""

from __future__ import annotations

import http.client
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from filelock import FileLock
from tqdm.auto import tqdm

from fidesr.errors import ConfigValueError, is_disk_full
from fidesr.files import atomic_write
from fidesr.protocol import parse_metric_config
from fidesr.weights.registry import WeightFile, canonical_target, files_for
from fidesr.weights.store import (
    WeightsMissingError,
    check_weights,
    describe_missing,
    file_path,
    file_status,
    inspect,
    matches,
    missing_files,
    remember,
    resolve_weights_dir,
)

MIRROR_ENV = "FIDESR_WEIGHTS_MIRROR"
MIN_RATE_ENV = "FIDESR_FETCH_MIN_RATE"
MIN_SECONDS_ENV = "FIDESR_FETCH_MIN_SECONDS"
OFFLINE_ENVS = ("FIDESR_OFFLINE", "HF_HUB_OFFLINE")
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """One file could not be fetched (HTTP error, dropped connection, checksum mismatch)."""


class OfflineError(FetchError):
    """Fetching is switched off, or the server cannot be reached at all."""


def offline_reason(mirror: str | os.PathLike | None = None) -> str | None:
    """``"$FIDESR_OFFLINE=1"`` (or HF_HUB_OFFLINE) when fetching from the source URLs is switched off and
    no mirror (``mirror`` or ``$FIDESR_WEIGHTS_MIRROR``) is configured, else None."""
    if mirror or os.environ.get(MIRROR_ENV):
        return None
    for name in OFFLINE_ENVS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"${name}={os.environ[name]}"
    return None


def source_url(f: WeightFile, mirror: str | os.PathLike | None = None) -> str:
    """``f.url``, or the mirror's location with ``f``'s file name (a folder becomes a ``file://`` URL)."""
    mirror = str(mirror) if mirror else os.environ.get(MIRROR_ENV)
    if not mirror:
        return f.url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{f.filename}"


def _setting(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigValueError(f"${env}={raw}: must be a finite number > 0")
    return value


def download_to(
    url: str,
    out: IO[bytes],
    name: str,
    *,
    max_bytes: int,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> int:
    """Stream ``url`` into ``out``; returns the bytes written. Every failure is a ``FetchError``
    (``OfflineError``: no route); the caller removes what was written.

    Bounded in size and time, whatever the server does: the body may not exceed its Content-Length, nor
    ``max_bytes`` (an endless stream stops there); the whole download must end within
    ``max(min seconds, size / min rate)`` (the size announced, else ``max_bytes``), and with no size
    announced it must also keep ``min rate`` on average after the first ``min seconds`` (a drip feed stops).
    ``$FIDESR_FETCH_MIN_RATE`` (bytes/s, default 100,000) and ``$FIDESR_FETCH_MIN_SECONDS`` (default 60)
    set them, and ``timeout`` bounds each read.
    """
    min_rate, min_s = _setting(MIN_RATE_ENV, 100_000.0), _setting(MIN_SECONDS_ENV, 60.0)
    start, got = time.monotonic(), 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "fidesr-weights"})
        with urllib.request.urlopen(req, timeout=min(timeout, min_s)) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            if total is not None and total > max_bytes:
                raise FetchError(
                    f"{url}: announces {total:,} bytes, more than the {max_bytes:,} allowed; not fetched"
                )
            limit = total or max_bytes
            allowed = max(min_s, limit / min_rate)
            read = getattr(resp, "read1", resp.read)  # returns what has arrived: the clock is checked often
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                leave=False,
                disable=None if progress is None else not progress,
            ) as bar:
                while block := read(min(_CHUNK, limit + 1 - got)):
                    got += len(block)
                    if got > limit:
                        raise FetchError(f"{url}: more than {limit:,} bytes sent; stopped, nothing saved")
                    out.write(block)
                    bar.update(len(block))
                    elapsed = time.monotonic() - start
                    slow = total is None and elapsed > min_s and got < min_rate * elapsed
                    if elapsed > allowed or slow:
                        raise FetchError(
                            f"{url}: too slow, {got:,} of {limit:,} bytes after {elapsed:.0f} s (at least "
                            f"{min_rate / 1000:g} kB/s expected; ${MIN_RATE_ENV} lowers it); stopped, nothing saved"
                        )
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if url.startswith("file:"):
            raise FetchError(f"{url}: not in the mirror folder ({err.reason})") from None
        raise OfflineError(f"{url}: no route to the server ({err.reason})") from None
    except (http.client.HTTPException, OSError) as err:  # IncompleteRead, reset, timeout mid-stream
        if is_disk_full(err):  # our write failed, not the connection: fetch_file names the file
            raise
        raise FetchError(f"{url}: connection dropped ({type(err).__name__}: {err})") from None
    if total is not None and got != total:
        raise FetchError(f"{url}: connection dropped after {got} of {total} bytes")
    return got


def fetch_file(
    f: WeightFile,
    weights_dir: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Make ``f`` present and valid in the weights directory; returns its path.

    Does nothing for a file already present and valid. Raises ``OfflineError`` when offline,
    ``FetchError`` when the download fails or does not match the checksum (nothing is left under the
    final name, and a previous corrupt file there stays until a valid one replaces it).
    """
    wd = resolve_weights_dir(weights_dir)
    dest = file_path(f, wd)
    if file_status(f, wd).ok:
        return dest
    if reason := offline_reason(mirror):
        raise OfflineError(f"{f.filename}: not fetched, offline ({reason})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{f.filename}.lock")):
        if file_status(f, wd).ok:  # another process fetched it while this one waited for the lock
            return dest
        for stale in dest.parent.glob(f".{f.filename}.*.part"):  # left by a killed fetch; we hold the lock
            stale.unlink(missing_ok=True)
        url = source_url(f, mirror)
        # Checked under its temporary name; a file that fails the check is never renamed in.
        with atomic_write(dest) as out:
            download_to(url, out, f.filename, max_bytes=f.max_bytes, timeout=timeout, progress=progress)
            out.flush()
            entry = inspect(f, Path(out.name))
            if not matches(f, entry["digest"]):
                raise FetchError(
                    f"{url}: checksum mismatch (expected {f.hash_label}, found {entry['digest']}); not saved"
                )
            if entry.get("not_data"):
                raise FetchError(
                    f"{url}: {entry['not_data']}: its sha256 prefix matches, but it is not plain data; not saved"
                )
        remember(f, dest, entry, wd)  # checked above: not hashed again under its final name
    if not file_status(f, wd).ok:  # records the digest; fails only if the file changed under us
        raise FetchError(f"{dest}: changed after it was fetched")
    return dest


def fetch(
    targets: Iterable[str],
    weights_dir: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> tuple[dict[str, Path], dict[str, FetchError]]:
    """Fetch every file ``targets`` need (metric names, ``lpips_vgg``); returns ({key: path}, {key: error}).

    Stops trying once the server proves unreachable or fetching is off: the remaining files get the same
    ``OfflineError`` instead of one timeout each.
    """
    done: dict[str, Path] = {}
    failed: dict[str, FetchError] = {}
    offline: OfflineError | None = None
    for key, f in files_for(canonical_target(t) for t in targets).items():
        if file_status(f, weights_dir).ok:
            done[key] = file_path(f, weights_dir)
            log(f"ok        {f.filename}")
            continue
        if offline is not None:
            failed[key] = offline
            continue
        try:
            done[key] = fetch_file(f, weights_dir, mirror=mirror, progress=progress)
            log(f"fetched   {f.filename} <- {source_url(f, mirror)}")
        except OfflineError as err:
            offline = failed[key] = err
            log(f"FAILED    {f.filename}: {err}")
        except FetchError as err:
            failed[key] = err
            log(f"FAILED    {f.filename}: {err}")
    return done, failed


def ensure_weights(
    targets: Iterable[str],
    weights_dir: str | os.PathLike | None = None,
    *,
    required: Iterable[str] | None = None,
    mirror: str | os.PathLike | None = None,
    error_type: type[WeightsMissingError] = WeightsMissingError,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Fetch what ``targets`` lack (when online), then verify; returns the targets that are ready.

    Every target in ``required`` (default: all) that still lacks a file raises ``error_type``, listing
    every such file, why it could not be fetched, and the one command that fetches them.
    """
    targets = [canonical_target(t) for t in targets]
    req = set(targets) if required is None else {canonical_target(r) for r in required}
    missing = missing_files(targets, weights_dir)
    errors: dict[str, FetchError] = {}
    if missing:
        _, errors = fetch(missing, weights_dir, mirror=mirror, log=log)
        missing = missing_files(targets, weights_dir)
    fatal = {t: v for t, v in missing.items() if t in req}
    if fatal:
        why = sorted({str(errors[s.file.key]) for v in fatal.values() for s in v if s.file.key in errors})
        raise error_type(
            f"weight files missing in {resolve_weights_dir(weights_dir)}:\n{describe_missing(fatal, weights_dir)}"
            + ("".join(f"\n  ({w})" for w in why[:5]))
            + "\nOffline: run that command on a machine with network and copy the folder here, or set "
            f"${MIRROR_ENV} to a folder or URL holding the files."
        )
    return [t for t in targets if t not in missing]


def ensure_run_weights(
    metrics: Iterable[str] | Mapping[str, Mapping[str, Any] | None],
    weights_dir: str | os.PathLike | None = None,
    *,
    also: Iterable[str] = (),
    log: Callable[[str], None] = print,
) -> list[str]:
    """Start-up of a run: fetch the files of its metrics and ``also`` (``lpips_vgg`` for the training
    loss) when online; required metrics and ``also`` must then be complete (one error lists every missing
    file), optional metrics without files are skipped with one warning. Returns the metrics that run."""
    names, cfg_required, _ = parse_metric_config(metrics if isinstance(metrics, Mapping) else list(metrics))
    also = list(also)
    ensure_weights([*names, *also], weights_dir, required=[*cfg_required, *also], log=log)
    return check_weights(metrics, weights_dir=weights_dir)
