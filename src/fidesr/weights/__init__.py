"""Metric and loss weight files: the public face of ``registry`` (what files, from where, which checksum),
``store`` (the one rule for where they live; verification and status), ``fetch`` (download, mirror,
offline), ``install`` (package registries, user files) and ``data`` (weights-only loading).

Where files live is decided in one place, ``store.resolve_weights_dir`` (its module docstring states the
rule; docs/metrics.md explains it for users). Metric code never downloads by itself: files are fetched and
checked by ``fetch`` before a network is built, and ``no_downloads`` turns any download a library still
attempts into ``WeightsMissingError``. No number is computed with random weights, and no weight file is
unpickled beyond tensors and plain values (``data``).

The metrics (``fidesr.metrics``) and the LPIPS-VGG training loss (``fidesr.components.perceptual``) both
import this package; it imports nothing of theirs (which files a metric needs comes from ``fidesr.protocol``).
"""

from fidesr.weights.data import WeightsNotDataError, data_only_loads, load_data, prove_data
from fidesr.weights.fetch import (
    MIN_RATE_ENV,
    MIN_SECONDS_ENV,
    MIRROR_ENV,
    FetchError,
    OfflineError,
    ensure_run_weights,
    ensure_weights,
    fetch,
    fetch_file,
    offline_reason,
    source_url,
)
from fidesr.weights.install import adopt, install, niqe_mat_from_npz
from fidesr.weights.registry import FILES, LPIPS_VGG, WeightFile, all_targets, files_for, metric_files
from fidesr.weights.store import (
    ENV_VAR,
    FileStatus,
    WeightsMissingError,
    apply_environment,
    build_scope,
    check_weights,
    describe_missing,
    fetch_command,
    file_path,
    file_status,
    hf_home,
    import_pyiqa,
    no_downloads,
    resolve_weights_dir,
    sha256_file,
    status,
    torch_cache_scope,
    weights_dir_origin,
)

__all__ = [
    "ENV_VAR",
    "FILES",
    "LPIPS_VGG",
    "MIN_RATE_ENV",
    "MIN_SECONDS_ENV",
    "MIRROR_ENV",
    "FetchError",
    "FileStatus",
    "OfflineError",
    "WeightFile",
    "WeightsMissingError",
    "WeightsNotDataError",
    "adopt",
    "all_targets",
    "apply_environment",
    "build_scope",
    "check_weights",
    "data_only_loads",
    "describe_missing",
    "ensure_run_weights",
    "ensure_weights",
    "fetch",
    "fetch_command",
    "fetch_file",
    "file_path",
    "file_status",
    "files_for",
    "hf_home",
    "import_pyiqa",
    "install",
    "load_data",
    "metric_files",
    "niqe_mat_from_npz",
    "no_downloads",
    "offline_reason",
    "prove_data",
    "resolve_weights_dir",
    "sha256_file",
    "source_url",
    "status",
    "torch_cache_scope",
    "weights_dir_origin",
]
