"""Fixtures of the weight tests: an isolated weights directory per test (autouse) and NIQE's parameters,
shared with the metric tests (``_metrics_shared``)."""

from __future__ import annotations

from _metrics_shared import niqe_weights, weights_dir  # noqa: F401 (fixtures, used by name)
