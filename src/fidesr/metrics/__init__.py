"""Evaluation metrics: ``MetricSuite`` (``suite``), weights (``weights``); the protocol they compute is
``fidesr.protocol``.

Importing this package does not import pyiqa. Where weight files live: ``weights_store``.
"""

from fidesr.metrics.suite import NA_WEIGHTS, MetricSuite, SeparableSSIM, fid_folders
from fidesr.metrics.weights import WeightsMissingError, check_weights, resolve_weights_dir

__all__ = [
    "NA_WEIGHTS",
    "MetricSuite",
    "SeparableSSIM",
    "WeightsMissingError",
    "check_weights",
    "fid_folders",
    "resolve_weights_dir",
]
