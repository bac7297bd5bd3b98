"""GRPO + lambda * SDPO: the scalar-reward surrogate and feedback distillation on the same
rollouts, sharing one student forward pass per micro-batch."""
from vpd_bench.method import distillation_loss, grpo_loss, grpo_prepare, register_method

from .grpo import GRPO
from .sdpo import SDPO


@register_method("grpo_sdpo")
class GRPOSDPO(SDPO):
    ppo_epochs = GRPO.ppo_epochs
    needs_reference = GRPO.needs_reference

    def prepare(self, batch):
        return {**grpo_prepare(self, batch), **super().prepare(batch)}

    def loss(self, mb):
        rl = grpo_loss(self, mb, mb.batch_extras["grpo_norm"])
        distill = distillation_loss(self, mb, mb.batch_extras["distill_norm"])
        return rl + self.mcfg.sdpo_weight * distill
