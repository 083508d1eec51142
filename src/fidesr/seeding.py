"""The one rule that turns a tuple of values into a seed (a training step's noise, a training sample, an
image's degradation in ``fidesr-degrade``).

:func:`derive_seed` hashes the text ``sep.join(str(p) for p in parts)`` (UTF-8) with SHA-256 and reads the
digest's first 8 bytes as a little-endian unsigned integer with its top bit cleared: a seed in
``[0, 2**63)`` that every platform and Python version computes alike, and that a resumed or multi-GPU run
recomputes from the same values. The integers are pinned by ``tests/test_seeding.py``: changing the rule
changes what every training run draws.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]

_MASK_63 = (1 << 63) - 1


def derive_seed(*parts: object, sep: str = "/") -> int:
    """A 63-bit seed from ``parts``: SHA-256 of ``sep.join(map(str, parts))`` in UTF-8, first 8 bytes of
    the digest little-endian, top bit cleared (module doc). ``derive_seed(42, 7)`` hashes ``"42/7"``."""
    digest = hashlib.sha256(sep.join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK_63
