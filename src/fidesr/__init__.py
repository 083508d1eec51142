"""fidesr: a Lightning + Hydra framework for FiDeSR, one-step diffusion super-resolution."""

import logging

__version__ = "0.1.0"


def _drop_kernels_hub_notice(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' start-up warning "Failed to load CPU gemm_4bit_forward from kernels-community"
    (a 4-bit CPU kernel fidesr never uses; bitsandbytes comes with pyiqa and peft imports it), which every
    command would otherwise print. Its other messages pass."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# Installed on import of the package, before any submodule can import peft (and with it bitsandbytes).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_kernels_hub_notice)
