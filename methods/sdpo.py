"""SDPO (Huebotter et al., arXiv 2601.20802): passive self-distillation from feedback.

The same network, shown the verifier's feedback and/or a successful sibling in its prompt,
is the teacher q(y | x, C). The student minimises, on its own rollouts, the token divergence
D_alpha(p_student || sg p_teacher) (alpha = 0 forward KL, 1 reverse KL, between generalised
JSD), importance-weighted against the rollout policy. No reward term. The teacher's weights
come from a strategy (default: an EMA of the student, tau = 0.05).
"""
from vpd_bench.method import (Method, distill_prepare, distillation_loss, reference_feedback,
                              register_method)


@register_method("sdpo")
class SDPO(Method):
    @property
    def teacher_strategy(self) -> str:
        return self.mcfg.teacher

    def teacher_feedback(self, batch):
        if self.mcfg.context == "reference":
            return reference_feedback(batch)
        return self.trainer.feedback.build(batch, self.trainer.feedback_context)

    def prepare(self, batch):
        return distill_prepare(self, batch)

    def loss(self, mb):
        return distillation_loss(self, mb, mb.batch_extras["distill_norm"])

    def after_update(self, batch, step):
        self.trainer.teacher.after_step()      # EMA teachers move towards the student
        return {}
