"""The SD backbone adapter (load, LoRA, encode/decode, one-step residual, teacher) and the tiny preset."""

from fidesr.backbone.hub import BackboneLoadError
from fidesr.backbone.lora import ADAPTER_NAMES, LORA_TARGETS, add_lora_adapters, split_lora_targets
from fidesr.backbone.sd import StableDiffusionBackbone
from fidesr.backbone.tiny import build_tiny_backbone

__all__ = [
    "ADAPTER_NAMES",
    "LORA_TARGETS",
    "BackboneLoadError",
    "StableDiffusionBackbone",
    "add_lora_adapters",
    "build_tiny_backbone",
    "split_lora_targets",
]
