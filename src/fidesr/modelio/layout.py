"""The names every model file of fidesr is read and written by: the exported folder's files and format
versions, and the keys of the official FiDeSR ``.pkl``. Imports nothing of fidesr, so that the reader
(:mod:`~fidesr.modelio.read`), the writer (:mod:`~fidesr.modelio.write`), the official layouts
(:mod:`~fidesr.modelio.layouts`) and the Hub fetch (:mod:`~fidesr.modelio.released`) share them without
importing each other.

The exported folder::

    DIR/config.json                        {"format": "fidesr", "version": 2, "config": {...}, "lora": {...}, ...}
    DIR/pytorch_lora_weights.safetensors   the UNet LoRA, diffusers/PEFT key names ("unet.<module>.lora_A.weight")
    DIR/lrrb.safetensors                   the LRRB weights (if the model has one)
    DIR/extras.safetensors                 what diffusers' LoRA file cannot hold (OSEDiff: VAE LoRA, conv_in)
    DIR/README.md                          a model card (base model, training config, metrics, licence)

``pytorch_lora_weights.safetensors`` is what diffusers' ``load_lora_weights(DIR)`` /
``UNet2DConditionModel.load_lora_adapter(DIR, prefix="unet")`` read: the three official adapters
(encoder / decoder / others) share rank and alpha and never overlap, so together they are one adapter
for diffusers; ``config.json`` keeps which module belongs to which, so fidesr reloads them exactly.

A model with PiSA-SR's two LoRA sets (``backbone.lora_sets``; format version 3) has one such file per set
instead, ``DIR/pix/pytorch_lora_weights.safetensors`` and ``DIR/sem/pytorch_lora_weights.safetensors``
(each one diffusers adapter, ``load_lora_weights(DIR, subfolder="pix")``): PiSA-SR's inference weighs the
two sets' outputs, which one merged file could not express.
"""

from __future__ import annotations

import re

FOLDER_FORMAT = "fidesr"
FOLDER_VERSION = 2
FOLDER_VERSION_SETS = 3  # exports with two LoRA sets (one LoRA file per set)
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name
LRRB_FILE = "lrrb.safetensors"
EXTRAS_FILE = "extras.safetensors"  # tensors diffusers' LoRA file cannot hold (OSEDiff: VAE LoRA, conv_in)
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: Every file an exported folder may hold (what a Hub fetch asks for: nothing that can hold code).
FOLDER_PATTERNS = (CONFIG_FILE, LORA_FILE, f"*/{LORA_FILE}", LRRB_FILE, EXTRAS_FILE, CARD_FILE)
LEGACY_ADAPTER_FORMAT = "fidesr-adapter"
#: The sections of a stored config, and the keys of its ``model`` section, a model is rebuilt from.
CONFIG_SECTIONS = ("backbone", "lrrb", "lfim", "model")
MODEL_KEYS = ("color_fix", "min_lq_size")
#: A training checkpoint's averaged generator weights (``fidesr.callbacks.ema.WeightEMA``): ``state_dict``
#: keyed like the checkpoint's own, ``updates``, ``decay``; the readers prefer it.
EMA_KEY = "fidesr_ema"
#: peft's default ``lora_alpha``, which the official code never sets (scale 8 / rank).
OFFICIAL_LORA_ALPHA = 8.0
#: The keys of the official FiDeSR ``.pkl``.
OFFICIAL_KEYS = (
    "unet_lora_encoder_modules",
    "unet_lora_decoder_modules",
    "unet_lora_others_modules",
    "lora_rank_unet",
    "state_dict_unet",
)
#: ``<module>.lora_A.<adapter>.weight`` (peft inside the UNet) <-> ``<module>.lora_A.weight`` (diffusers files).
ADAPTER_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")
#: An adapter of a LoRA set, before its ``_<set>`` suffix (``lora_A.default_encoder_pix``).
SET_ADAPTER = r"lora_[AB]\.default_(?:encoder|decoder|others)"
