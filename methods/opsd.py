"""OPSD (Zhao et al., arXiv 2601.18734): on-policy self-distillation from a reference-reading
teacher with the frozen initial weights, generalised JSD with alpha = 0.5.

The SDPO loss with ``context: reference`` and ``teacher: frozen`` (``conf/method/opsd.yaml``).
"""
from vpd_bench.method import register_method

from .sdpo import SDPO


@register_method("opsd")
class OPSD(SDPO):
    pass
