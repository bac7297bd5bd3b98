"""Multi-process training on CPU (gloo): 2 processes make the same update as 1 on the same data,
and `accelerate launch -m vpd_bench run ...` runs end to end with only rank 0 writing the store."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vpd_bench.training import distributed as D
from vpd_bench.training import equivalence

# B=4 prompts x G=4 responses; the E-step runs at step 1 (estep_every=1) so VPD's sharded E-step is
# compared too. Seed and lengths give mixed rewards (checked below), so the updates are not empty.
COMMON = ["train.prompts_per_step=4", "train.group_size=4", "rollout.max_new_tokens=24",
          "train.micro_batch_size=3", "train.lr=1e-3", "train.grad_clip=0",
          "model.dtype=float64"]   # float64 weights: the two layouts differ only in the order micro-batch
# gradients are summed, which in float32 is ~1e-5 of a tensor's scale on an AVX2-only host (seen: 1.15e-5)
# and would let a small bug hide; in float64 that noise is ~1e-15, so a tight tolerance holds
RUNS = {"grpo": COMMON, "vpd": COMMON + ["method.estep_every=1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, out: Path) -> None:
    torch.multiprocessing.spawn(equivalence._spawn_entry, args=(world, free_port(), RUNS, str(out)),
                                nprocs=world, join=True)


def test_shard_bounds_partition_the_batch():
    for n in (4, 5, 7):
        for world in (1, 2, 3):
            parts = [D.DistContext(rank=r, world_size=world).shard(list(range(n))) for r in range(world)]
            assert [x for p in parts for x in p] == list(range(n))       # contiguous, in order, complete
    one = D.DistContext()
    seq = [1, 2, 3]
    assert one.shard(seq) is seq and one.reduce_metrics({"a": 1}) == {"a": 1}   # identity in one process


def test_the_distillation_normaliser_counts_the_tokens_each_rank_scores():
    """Summed across ranks, the token count is that of the tokens the loss scores: with
    distill_after_answer=false (``distill_keep``) those up to each answer, on rows with a teacher."""
    from vpd_bench.rollout.batch import RolloutBatch
    b = RolloutBatch(step=1, group_size=3, problems=[None], prompt_texts=[""], prompt_ids=[[1]])
    b.response_ids = [[5] * 6, [5] * 4, [5] * 3]
    b.teacher_mask = torch.tensor([True, True, False])
    assert D._raw_counts("distill_norm", b, None) == (10.0, 2.0)
    b.extras["distill_keep"] = torch.tensor([2, 4, 3])
    assert D._raw_counts("distill_norm", b, None) == (6.0, 2.0)


def test_two_processes_make_the_same_update_as_one(tmp_path):
    spawn(1, tmp_path)
    spawn(2, tmp_path)
    for method in RUNS:
        one = torch.load(tmp_path / f"{method}-w1.pt")
        two = torch.load(tmp_path / f"{method}-w2.pt")
        rewards = torch.tensor(one["rewards"]).view(4, 4)
        assert bool(((rewards.max(1).values - rewards.min(1).values) > 0).any())   # some group has signal
        # one optimizer step for GRPO, two for VPD (M-step, then the E-step)
        assert len(one["grads"]) == len(two["grads"]) == (2 if method == "vpd" else 1)
        for g1, g2 in zip(one["grads"], two["grads"]):
            pairs = [(a, b) for a, b in zip(g1, g2) if a is not None or b is not None]
            assert pairs and max(float(a.abs().max()) for a, _ in pairs) > 0    # a real gradient
            # GRPO: each rank's micro-batches hold the same rows as in one process (seen: bit-identical).
            # VPD: its E-step batches by token budget, so the two layouts pad rows differently, and the
            # float64 backward sums in another order (~1e-16). transformers' LlamaRMSNorm computes in
            # float32 (`hidden_states.to(torch.float32)`), a down-cast in a float64 model, so those
            # differences come out rounded to float32: 1e-8 to 2e-7 of the tensor scale (seen; one
            # process with micro_batch_size 3 vs 1 differs as much, GRPO included, while the model's
            # forward scores agree to 1e-15 and the final norm's weight gradient to 4e-16). 1e-6
            # still fails a wrong shard weighting (a factor of ~2) or a missing all-reduce by five
            # orders of magnitude
            tol = 1e-12 if method == "grpo" else 1e-6
            for a, b in pairs:
                assert float((a - b).abs().max()) <= tol * float(a.abs().max()) + 1e-15
        # Adam's first steps are ~lr * sign(grad): where |grad| ~ eps, float noise in the gradient
        # moves a weight by a fraction of lr, so parameters are compared to 5% of lr = 1e-3
        for a, b in zip(one["params"], two["params"]):
            torch.testing.assert_close(b, a, rtol=0, atol=5e-5)
        assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], rel=1e-4, abs=1e-7)
        if method == "vpd":
            assert one["metrics"]["estep_size"] == two["metrics"]["estep_size"] > 0
            assert two["metrics"]["estep_loss"] == pytest.approx(one["metrics"]["estep_loss"], rel=1e-4)
            assert two["metrics"]["delta"] == pytest.approx(one["metrics"]["delta"], rel=1e-4, abs=1e-6)


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate CLI not installed")
def test_accelerate_launch_runs_the_cli_with_two_processes(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "vpd_bench", "run", "--model", "tiny-random", "--task", "debug", "--steps", "2",
           "--out", str(tmp_path), "rollout.max_new_tokens=12", "eval.num_problems=4", "eval.samples=1"]
    env = {**os.environ, "VPD_BENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "debug" / "grpo" / "none" / "seed0"
    result = json.loads((run / "results.json").read_text())
    assert result["status"] == "complete" and result["steps_completed"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["world_size"] == 2 for r in rows)
    assert len((run / "train.log").read_text().splitlines()) == 2           # rank 0 alone wrote it
    # each rank generated its own slice of the 2 prompts; tokens are counted over both ranks
    assert result["tokens_generated"] == rows[-1]["tokens_generated"] > 0
