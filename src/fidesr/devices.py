"""Devices and dtypes from their names: the one place the ``auto`` rules live (backbone, inference
pipeline, metric suite, command-line options)."""

from __future__ import annotations

import torch

#: Names of the floating-point types fidesr accepts in configs and on the command line.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device`` reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from its name (``"float16"``, ``"fp16"``, ``"torch.float16"``); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError as err:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from err


def resolve_precision(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Inference precision: ``None``/``"auto"`` -> float16 on CUDA (what the references run), float32
    elsewhere; otherwise :func:`resolve_dtype`."""
    if precision is None or precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return resolve_dtype(precision)
    except ValueError as err:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16") from err
