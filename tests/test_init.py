"""fidesr/__init__.py: start-up free of third-party notices that say nothing to the user."""

from __future__ import annotations

import logging

import pytest

import fidesr  # noqa: F401  (installs the filter)


def test_bitsandbytes_kernels_hub_notice_is_dropped_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning bitsandbytes logs at import (peft imports it) on CPUs with AVX512-BF16 when the optional
    ``kernels`` package is missing; tests/cli/test_upscale.py's console-script test checks the real start-up."""
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
            "`pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        log.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_kernels_offline_trust_notice_for_bitsandbytes_kernel_is_dropped_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kernels >= 0.19 logs this when bitsandbytes asks for its CPU kernel with the Hub offline; a trust
    notice about any other repository still passes."""
    log = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING):
        log.warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
            "Face Hub is in offline mode."
        )
        log.warning(
            "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."
        )
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."
    ]
