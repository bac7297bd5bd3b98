"""SDFT (Shenfeld et al., arXiv 2601.19897): self-distillation with a fixed privileged context.

The teacher is the same network reading the data set's reference solution as a demonstration
(not feedback about the rollout), with EMA weights (tau = 0.01). Divergence alpha = 0 (forward
KL), as in the published code; the paper's text says reverse KL: set method.alpha=1.0 for that.
Everything else is the SDPO loss; the differences live in ``conf/method/sdft.yaml``.
"""
from vpd_bench.method import register_method

from .sdpo import SDPO


@register_method("sdft")
class SDFT(SDPO):
    pass
