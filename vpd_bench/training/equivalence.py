"""The multi-process equivalence check (tests; also a set-up check on a multi-GPU machine): one
update of a fixed batch with 1 and with N processes must agree. It drives the training loop, so
it lives beside it rather than inside the distributed hooks the loop itself imports."""
from __future__ import annotations

import os

import torch

from vpd_bench.training.distributed import _reset_for_tests, context


def fixed_batch_update(runs: dict[str, list[str]], out_dir: str, step: int = 1) -> None:
    """Build the whole step-``step`` rollout batch on every rank, keep this rank's slice, run one
    update (and the method's after-update: VPD's E-step) and save, from rank 0, the gradients of
    every optimizer step, the parameters after the update and the logged metrics to
    ``out_dir/<method>-w<world>.pt``. ``runs`` maps a method to its config overrides. Run it with
    1 and with N processes and compare."""
    from pathlib import Path

    from vpd_bench.rollout.batch import RolloutBatch
    from vpd_bench.config import compose
    from vpd_bench.training.loop import Trainer

    ctx = context()
    for method, overrides in runs.items():
        cfg = compose(method, "debug", None, model="tiny-random", overrides=list(overrides))
        run_dir = Path(out_dir) / f"run-{method}-w{ctx.world_size}"
        trainer = Trainer(cfg, run_dir, progress=False)
        with ctx.local_view():
            full = trainer.generate(step)
        trainer.verify(full)
        lo, hi = ctx.bounds(len(full.problems), allow_empty=False)
        G = full.group_size
        batch = RolloutBatch(step=step, group_size=G, problems=full.problems[lo:hi],
                             prompt_texts=full.prompt_texts[lo:hi], prompt_ids=full.prompt_ids[lo:hi])
        for name in ("response_ids", "rollout_logp", "finish_reasons", "response_texts", "statuses",
                     "verdict_feedback", "verdicts"):
            setattr(batch, name, getattr(full, name)[lo * G:hi * G])
        batch.rewards = full.rewards[lo * G:hi * G]
        grads: list = []
        step_fn = trainer.optimizer.step

        def capture(*a, **k):           # the synchronised gradients of every optimizer step
            grads.append([p.grad.detach().clone() if p.grad is not None else None
                          for p in trainer.model.parameters()])
            return step_fn(*a, **k)

        trainer.optimizer.step = capture
        trainer.build_teacher_context(batch)
        metrics = trainer.update_student(batch)
        metrics.update(trainer.method.after_update(batch, step))
        metrics = ctx.reduce_metrics(metrics)
        if ctx.is_main:
            torch.save({"grads": grads, "params": [p.detach().clone() for p in trainer.model.parameters()],
                        "metrics": metrics, "rewards": full.rewards.tolist()},
                       Path(out_dir) / f"{method}-w{ctx.world_size}.pt")
        ctx.barrier()


def _spawn_entry(rank: int, world: int, port: int, runs: dict[str, list[str]], out_dir: str) -> None:
    """torch.multiprocessing.spawn target: set the launcher's environment, then run the check."""
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "VPD_BENCH_DEVICE": "cpu",
                       "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    _reset_for_tests()
    fixed_batch_update(runs, out_dir)
    if world > 1:
        torch.distributed.destroy_process_group()
