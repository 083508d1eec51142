"""fidesr: a Lightning + Hydra framework for FiDeSR, one-step diffusion super-resolution."""

import logging

__version__ = "0.1.0"


#: Start-up notices of bitsandbytes' optional 4-bit CPU kernel (from the Hub repo kernels-community/
#: quantization-bitsandbytes), which fidesr never uses: bitsandbytes comes with pyiqa and peft imports it, so
#: every command would otherwise print them. (logger, message prefix); their other messages pass.
_DROPPED_NOTICES = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # kernels >= 0.19 under HF_HUB_OFFLINE (tests, the demo) when bitsandbytes asks for that kernel
    (
        "kernels._internals.hf_hub",
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    ),
)


def _dropper(prefix: str):
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    return keep


# Installed on import of the package, before any submodule can import peft (and with it bitsandbytes).
for _name, _prefix in _DROPPED_NOTICES:
    logging.getLogger(_name).addFilter(_dropper(_prefix))
