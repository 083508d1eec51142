"""Synthetic HQ -> LQ degradations: parameters sampled on CPU per sample, applied batched on the device.

See docs/degradation.md and the contract in docs/ARCHITECTURE.md.
"""

from .base import Degradation
from .bicubic import BicubicDegradation
from .presets import PRESETS, load_preset
from .realesrgan import RealESRGANDegradation

__all__ = ["PRESETS", "BicubicDegradation", "Degradation", "RealESRGANDegradation", "load_preset"]
