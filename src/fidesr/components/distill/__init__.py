"""Distillation terms: the frozen diffusion prior as a regulariser of the one-step generator.

:mod:`.base` is the interface the training module calls; :mod:`.csd` (FiDeSR, PiSA-SR) and :mod:`.vsd`
(OSEDiff) implement it. A new term is a new file here plus ``conf/distill/<name>.yaml``.
"""

from fidesr.components.distill.base import DistillationTerm, DistillOutput
from fidesr.components.distill.csd import ClassifierScoreDistillation
from fidesr.components.distill.vsd import VariationalScoreDistillation

__all__ = [
    "ClassifierScoreDistillation",
    "DistillOutput",
    "DistillationTerm",
    "VariationalScoreDistillation",
]
