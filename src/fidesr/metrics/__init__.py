"""Evaluation metrics: ``MetricSuite`` (``suite``) computing the protocol of ``fidesr.protocol``.

Importing this package does not import pyiqa. Where weight files live, how they are fetched and checked:
``fidesr.weights``.
"""

from fidesr.metrics.suite import NA_WEIGHTS, MetricSuite, SeparableSSIM, fid_folders

__all__ = ["NA_WEIGHTS", "MetricSuite", "SeparableSSIM", "fid_folders"]
