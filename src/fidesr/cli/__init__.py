"""The ``fidesr-*`` commands. Importing this package is their start-up: it applies the weights rule
(``fidesr.metrics.weights_store``) to the process environment once, before torch.hub, pyiqa or
huggingface_hub read it, so that every command uses the same weights directory and caches."""

from fidesr.metrics.weights_store import apply_environment

apply_environment()
