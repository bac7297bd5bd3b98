"""Multi-process training (one process per GPU, or per CPU slot with gloo) launched by Accelerate.

    accelerate launch --num_processes 8 -m vpd_bench run --methods vpd --task math ...

Data parallel, DDP-equivalent: every rank holds the whole model and optimizer.

- **Rollouts are split across ranks.** Step s still draws the same B prompts as one process
  would; rank r keeps the contiguous slice ``[B*r//W, B*(r+1)//W)`` and generates, verifies and
  scores only that slice. Groups (the G responses of a prompt) never straddle ranks, so
  group-relative advantages and sibling feedback are unchanged.
- **Loss normalisers are global.** The token/sequence counts that divide a loss
  (``grpo_norm``, ``distill_norm``) are all-reduced before the first micro-batch, so each rank's
  loss is its share of the *global* batch loss.
- **Gradients are summed** across ranks once per optimizer step (bucketed all-reduce, the same
  maths as DDP with gradient accumulation under ``no_sync``), then clipped and stepped
  identically everywhere. Summing shares of a global loss gives exactly the gradient one
  process computes on the whole batch, so N processes on the same data make the same update
  as one (``tests/test_distributed.py`` checks it, GRPO and VPD, E-step included).
  Why not ``accelerator.prepare(model)`` (a DDP wrapper)? DDP hides ``logits_to_keep`` behind
  ``forward(*args, **kwargs)``, renames every state-dict key, and needs the same number of
  backward passes on every rank, which uneven slices and E-step shards do not give.
- **VPD's E-step** gathers its buffer from all ranks (so the buffer, and the checkpoint written
  by rank 0, are the global ones), shards the buffer's micro-batches across ranks, and
  all-reduces the implicit-reward mean that moves ``delta``.
- **Held-out evaluation** is sharded by problem and merged (problem-weighted means).
- **Only rank 0 writes the run store** (metrics, samples, checkpoints, results, train.log);
  the other ranks read it (resume) but write nothing. Logged metrics are reduced across ranks:
  losses summed (each rank holds a share), times maxed, the rest averaged.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is the identity,
and nothing is imported from Accelerate or torch.distributed.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch

from vpd_bench.training.store import RunStore

log = logging.getLogger("vpd_bench")

# metric reductions across ranks (anything numeric not named here is averaged)
SUM_METRICS = {"loss", "estep_loss"}             # each rank holds its share of a global loss
MAX_METRICS = {"step_time_s", "generate_s", "verify_s", "update_s", "teacher_update_s", "wall_time_s",
               "eval_time_s"}
BUCKET_NUMEL = 1 << 25                           # gradient all-reduce bucket (32 M elements)


class FollowerStore(RunStore):
    """The run store as seen by ranks > 0: reads (for resume) like rank 0's, never writes."""

    def write_config(self, yaml_text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def save_checkpoint(self, step: int, state: dict, keep: int = 1, model=None, tokenizer=None):
        return self.ckpt_dir / f"step_{step:06d}"


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    _local_view: bool = False        # shard() returns everything (tests, the equivalence check)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- placement -----------------------------------------------------------------------------------
    def place(self, model):
        """Move the model to this rank's device (a no-op on CPU)."""
        if self.device.type == "cpu":
            return model
        return model.to(self.device)

    def follower_store(self, run_dir) -> RunStore:
        return FollowerStore(run_dir)

    # -- sharding -------------------------------------------------------------------------------------
    def bounds(self, n: int, allow_empty: bool = True) -> tuple[int, int]:
        if not self.enabled or self._local_view:
            return 0, n
        if n < self.world_size and not allow_empty:
            from vpd_bench.errors import UserError
            raise UserError(f"train.prompts_per_step={n} is smaller than the number of processes "
                            f"({self.world_size}): every rank needs at least one prompt")
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def shard(self, seq, allow_empty: bool = True):
        """This rank's contiguous slice of ``seq`` (the whole of it with one process)."""
        if not self.enabled or self._local_view:
            return seq
        lo, hi = self.bounds(len(seq), allow_empty)
        return seq[lo:hi]

    @contextlib.contextmanager
    def local_view(self):
        """Within this block shard() returns everything: build a whole batch on every rank."""
        saved, self._local_view = self._local_view, True
        try:
            yield
        finally:
            self._local_view = saved

    # -- collectives ---------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_floats(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def sum_int(self, value: int) -> int:
        return int(round(self.sum_floats([float(value)])[0])) if self.enabled else value

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients across ranks in buckets. A parameter with no gradient anywhere keeps
        ``grad = None`` (AdamW then skips it, as it would in one process)."""
        if not self.enabled or not params:
            return
        dev = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        torch.distributed.all_reduce(has)
        live = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict = {}
        for p in live:
            by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in by_dtype.values():
            for bucket in _buckets(group):
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                torch.distributed.all_reduce(flat)
                offset = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[offset:offset + n].view_as(q.grad))
                    offset += n

    # -- the loop's hooks ---------------------------------------------------------------------------------
    def sync_normalizers(self, batch) -> None:
        """Make the batch's loss normalisers global (counts over every rank's slice)."""
        if not self.enabled:
            return
        from vpd_bench.method import Normalizers
        keys = sorted(k for k, v in batch.extras.items() if isinstance(v, Normalizers))
        if not keys:
            return
        raw = []
        for k in keys:
            raw += list(_raw_counts(k, batch, batch.extras[k]))
        tot = self.sum_floats(raw)
        for i, k in enumerate(keys):
            batch.extras[k] = Normalizers(max(tot[2 * i], 1.0), max(tot[2 * i + 1], 1.0))

    def reduce_metrics(self, metrics: dict) -> dict:
        """One row for the run store from every rank's metrics (identity with one process)."""
        if not self.enabled:
            return metrics
        rows = self.gather_objects(metrics)
        out = dict(metrics)
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) and v is not None:
                continue
            vals = [r.get(k) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            if not vals:
                continue
            if k in SUM_METRICS:
                out[k] = float(sum(vals))
            elif k in MAX_METRICS:
                out[k] = max(vals)
            elif k != "step" and k != "tokens_generated":
                out[k] = sum(vals) / len(vals)
        out["world_size"] = self.world_size
        return out

    def merge_eval(self, metrics: dict) -> dict:
        """Held-out metrics of every rank's problem shard, merged into problem-weighted means."""
        if not self.enabled:
            return metrics
        rows = [r for r in self.gather_objects(metrics) if r and r.get("n_problems")]
        if not rows:
            return {}
        n = sum(r["n_problems"] for r in rows)
        out = {"n_problems": n, "k": rows[0].get("k")}
        for key in rows[0]:
            if key in ("n_problems", "k"):
                continue
            vals = [(r["n_problems"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if vals:
                out[key] = sum(w * v for w, v in vals) / sum(w for w, _ in vals)
        return out

    def adapt_method(self, method) -> None:
        """Distributed versions of a method's whole-batch steps (VPD's E-step)."""
        if not self.enabled:
            return
        if hasattr(method, "e_step") and hasattr(method, "_remember"):
            _adapt_vpd(method, self)


def _buckets(params: list, limit: int = BUCKET_NUMEL):
    bucket, numel = [], 0
    for p in params:
        if bucket and numel + p.grad.numel() > limit:
            yield bucket
            bucket, numel = [], 0
        bucket.append(p)
        numel += p.grad.numel()
    if bucket:
        yield bucket


def _raw_counts(key: str, batch, norm) -> tuple[float, float]:
    """The un-clamped local counts behind a normaliser (method.grpo_prepare / distill_prepare
    clamp at 1, which must happen after the global sum, not per rank)."""
    lengths = batch.response_lengths()
    if key == "grpo_norm":
        return float(lengths.sum()), float((lengths > 0).sum())
    if key == "distill_norm":
        keep = batch.extras.get("distill_keep")          # distill_after_answer=false scores fewer tokens
        lengths = (keep.float() if keep is not None else lengths) * batch.teacher_mask.float()
        return float(lengths.sum()), float((lengths > 0).sum())
    log.warning("normaliser %r is summed across ranks as computed (clamped) on each rank", key)
    return float(norm.num_tokens), float(norm.num_sequences)


# -- VPD's E-step across ranks --------------------------------------------------------------------------
def _adapt_vpd(method, ctx: DistContext) -> None:
    remember = method._remember

    def gathered_remember(batch):
        remember(batch)
        mine = method.buffer[-1] if method.buffer else []
        method.buffer[-1:] = [[it for part in ctx.gather_objects(mine) for it in part]]

    method._remember = gathered_remember
    all_batches = method._estep_micro_batches

    def my_batches(items):
        """The global buffer's micro-batches, split across ranks (class counts stay global and
        gradients are summed by ``optimizer_step``)."""
        batches = all_batches(items)
        lo, hi = ctx.bounds(len(batches))
        return batches[lo:hi]

    method._estep_micro_batches = my_batches
    method._global_sum = ctx.sum_floats      # the implicit-reward mean that moves delta


# -- the process-wide context ------------------------------------------------------------------------------
_CONTEXT: DistContext | None = None


def _pick_device(local_rank: int) -> torch.device:
    want = os.environ.get("VPD_BENCH_DEVICE", "auto").lower()
    if want == "cpu":
        return torch.device("cpu")
    if want.startswith("cuda") and ":" in want:
        return torch.device(want)
    if torch.cuda.is_available() and want in ("auto", "cuda", "gpu"):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def is_follower_rank() -> bool:
    """True for a rank other than 0 of a multi-process launch, read from the launcher's environment
    without setting up the process group (which ``context`` does): such a rank never writes the run."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) != 0


def context() -> DistContext:
    """This process's context, set up once from the launcher's environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT as set by ``accelerate launch`` or ``torchrun``)."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = _pick_device(local_rank)
    if world <= 1:
        _CONTEXT = DistContext(device=device)
        return _CONTEXT
    import torch.distributed as dist
    timeout = datetime.timedelta(minutes=float(os.environ.get("VPD_BENCH_DIST_TIMEOUT_MIN", "120")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:     # share the cores: oversubscribed OpenMP spins for ages
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // local_world))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not dist.is_initialized():
        try:      # Accelerate sets up the process group (nccl on GPUs)
            from accelerate import PartialState
            PartialState(timeout=timeout, cpu=device.type == "cpu")
        except Exception as err:  # noqa: BLE001 - fall back to a plain process group
            log.debug("accelerate could not initialise the process group (%s): using torch.distributed", err)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                           device=device)
    if _CONTEXT.is_main:
        log.info("distributed: %d processes, device %s", _CONTEXT.world_size, device)
    return _CONTEXT


def _reset_for_tests() -> None:
    global _CONTEXT
    _CONTEXT = None
