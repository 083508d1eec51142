"""Metric and loss weights: the public face of ``weights_registry`` (what files, from where, which
checksum), ``weights_store`` (the one rule for where they live; verification and status),
``weights_fetch`` (download, mirror, offline) and ``weights_install`` (package registries, user files).

Where files live is decided in one place, ``weights_store.resolve_weights_dir`` (its module docstring
states the rule; docs/metrics.md explains it for users). Metric code never downloads by itself: files are
fetched and checked by ``weights_fetch`` before a network is built, and ``no_downloads`` turns any
download a library still attempts into ``WeightsMissingError``. No number is computed with random weights,
and no weight file is unpickled beyond tensors and plain values (``weights_data``).
"""

from fidesr.metrics.weights_data import WeightsNotDataError, data_only_loads, load_data, prove_data
from fidesr.metrics.weights_fetch import (
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
from fidesr.metrics.weights_install import adopt, install, niqe_mat_from_npz
from fidesr.metrics.weights_registry import FILES, LPIPS_VGG, WeightFile, all_targets, files_for, metric_files
from fidesr.metrics.weights_store import (
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
