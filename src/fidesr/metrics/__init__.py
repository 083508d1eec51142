"""Evaluation metrics: the protocol (``specs``), ``MetricSuite`` (``suite``), weights (``weights``).

Importing this package does not import pyiqa. Where weight files live: ``weights_store``.
"""

from fidesr.metrics.specs import (
    PROTOCOL,
    MetricSpec,
    canonical_name,
    get_spec,
    monitor_mode,
    parse_metric_config,
)
from fidesr.metrics.suite import NA_WEIGHTS, MetricSuite, SeparableSSIM, fid_folders
from fidesr.metrics.weights import WeightsMissingError, check_weights, resolve_weights_dir

__all__ = [
    "NA_WEIGHTS",
    "PROTOCOL",
    "MetricSpec",
    "MetricSuite",
    "SeparableSSIM",
    "WeightsMissingError",
    "canonical_name",
    "check_weights",
    "fid_folders",
    "get_spec",
    "monitor_mode",
    "parse_metric_config",
    "resolve_weights_dir",
]
