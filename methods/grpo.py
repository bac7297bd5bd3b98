"""GRPO (Shao et al., 2024) and Dr.GRPO: reinforcement learning from the scalar reward only.

For each prompt, G responses form a group. Response i gets the group-relative advantage
A_i = r_i - mean(r_group), divided by the group's std unless ``scale_by_std`` is false
(Dr.GRPO). Each token is trained with the PPO-clipped surrogate
-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), with an optional k3 KL penalty
to the initial policy. No teacher, no feedback text.
"""
from vpd_bench.method import Method, grpo_loss, grpo_prepare, register_method


@register_method("grpo")
class GRPO(Method):
    @property
    def ppo_epochs(self) -> int:
        return int(self.mcfg.ppo_epochs)

    @property
    def needs_reference(self) -> bool:
        return self.mcfg.kl_coef > 0

    def prepare(self, batch):
        return grpo_prepare(self, batch)

    def loss(self, mb):
        return grpo_loss(self, mb, mb.batch_extras["grpo_norm"])


@register_method("dr_grpo")
class DrGRPO(GRPO):
    """Dr.GRPO: the same loss; its config sets scale_by_std: false."""
