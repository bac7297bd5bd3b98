"""Teacher strategies: which weights read the teacher prompt.

``live`` and VPD's ``trained`` use the student's own weights (no copy). ``frozen`` keeps the
initial weights, ``ema`` a slowly moving copy, ``trust_region`` mixes frozen and live logits.
Under LoRA the copies hold only adapter weights and ``frozen`` is the base model with the
adapter switched off.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from vpd_bench.losses import ema_update_, trust_region_logits
from vpd_bench.registry import lookup
from vpd_bench.rollout.scoring import Packed, response_logits


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


class TeacherStrategy:
    name = "base"
    extra_copies = 0     # full-model (or adapter) copies this strategy holds

    def __init__(self, student, tau: float = 0.0):
        self.student = student
        self.tau = float(tau)

    @torch.no_grad()
    def logits(self, packed: Packed, temperature: float, bf16: bool) -> torch.Tensor:
        return response_logits(self.student, packed, temperature, bf16)

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _CopyHolder(TeacherStrategy):
    """Holds one extra copy: a full model, or only the adapter tensors under LoRA."""
    extra_copies = 1

    def __init__(self, student, tau=0.0):
        super().__init__(student, tau)
        if is_peft(student):
            self.copy = None
            self.adapter = {n: p.detach().clone() for n, p in adapter_params(student).items()}
        else:
            self.copy = copy.deepcopy(student).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)
            self.adapter = None

    @contextmanager
    def _swapped_adapter(self):
        live = adapter_params(self.student)
        saved = {n: p.detach().clone() for n, p in live.items()}
        with torch.no_grad():
            for n, p in live.items():
                p.copy_(self.adapter[n])
        try:
            yield self.student
        finally:
            with torch.no_grad():
                for n, p in live.items():
                    p.copy_(saved[n])

    @torch.no_grad()
    def copy_logits(self, packed, temperature, bf16):
        if self.copy is not None:
            return response_logits(self.copy, packed, temperature, bf16)
        with self._swapped_adapter() as m:
            return response_logits(m, packed, temperature, bf16)

    def state_dict(self):
        if self.copy is not None:
            return {"copy": self.copy.state_dict()}
        return {"adapter": self.adapter}

    def load_state_dict(self, state):
        if self.copy is not None and "copy" in state:
            self.copy.load_state_dict(state["copy"])
        elif "adapter" in state:
            self.adapter = state["adapter"]


class LiveTeacher(TeacherStrategy):
    name = "live"


class TrainedTeacher(LiveTeacher):
    """VPD: the live shared weights, which the E-step also trains."""
    name = "trained"


class FrozenTeacher(_CopyHolder):
    name = "frozen"

    def __init__(self, student, tau=0.0):
        if is_peft(student):          # the base model with the adapter off is the initial policy
            TeacherStrategy.__init__(self, student, tau)
            self.copy, self.adapter = None, None
            self.extra_copies = 0
        else:
            super().__init__(student, tau)

    @torch.no_grad()
    def logits(self, packed, temperature, bf16):
        if self.copy is None and self.adapter is None:
            with self.student.disable_adapter():
                return response_logits(self.student, packed, temperature, bf16)
        return self.copy_logits(packed, temperature, bf16)

    def state_dict(self):
        return {} if (self.copy is None and self.adapter is None) else super().state_dict()


class EMATeacher(_CopyHolder):
    """theta_T <- (1 - tau) theta_T + tau theta after every student update."""
    name = "ema"

    @torch.no_grad()
    def logits(self, packed, temperature, bf16):
        return self.copy_logits(packed, temperature, bf16)

    def after_step(self):
        if self.copy is not None:
            ema_update_(list(self.copy.parameters()), list(self.student.parameters()), self.tau)
            for b_t, b_s in zip(self.copy.buffers(), self.student.buffers()):
                b_t.copy_(b_s)
        else:
            live = adapter_params(self.student)
            names = sorted(live)
            ema_update_([self.adapter[n] for n in names], [live[n] for n in names], self.tau)


class TrustRegionTeacher(FrozenTeacher):
    """Teacher logits = (1 - tau) * frozen + tau * live."""
    name = "trust_region"

    @torch.no_grad()
    def logits(self, packed, temperature, bf16):
        frozen = super().logits(packed, temperature, bf16)
        live = response_logits(self.student, packed, temperature, bf16)
        return trust_region_logits(frozen, live, self.tau)


STRATEGIES = {c.name: c for c in (LiveTeacher, TrainedTeacher, FrozenTeacher, EMATeacher, TrustRegionTeacher)}


def build_teacher(name: str, student, tau: float) -> TeacherStrategy:
    return lookup(STRATEGIES, name, "teacher strategy")(student, tau)
