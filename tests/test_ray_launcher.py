"""Sweeps on a local Ray instance: `vpd-bench run ... --launcher ray` runs each run as a Ray task with
its resource request, gathers results into the run store, and retries a failed run once.
Needs the `ray` extra (pip install -e '.[test,ray]'); CI installs it."""
import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from vpd_bench.launch import ray as R
from vpd_bench.cli import main
from vpd_bench.errors import UserError

if os.environ.get("CI"):
    import ray  # noqa: F401  (CI must install the extra: a missing ray fails here instead of skipping)
else:
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")

FAST = ["rollout.max_new_tokens=12", "eval.num_problems=4", "eval.samples=1"]


def rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_two_run_sweep_on_local_ray(tmp_path):
    out = tmp_path / "runs"
    rc = main(["run", "--launcher", "ray", "--methods", "grpo", "--seeds", "2", "--model", "tiny-random",
               "--task", "debug", "--steps", "2", "--out", str(out), *FAST])
    assert rc == 0
    for seed in (0, 1):
        run = out / "debug" / "grpo" / "none" / f"seed{seed}"
        result = json.loads((run / "results.json").read_text())
        assert result["status"] == "complete" and result["steps_completed"] == 2
        assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2]
        attempts = rows(run / "ray_attempts.log")
        assert len(attempts) == 1 and attempts[0]["resources"].get("CPU") == 1 and attempts[0]["shared_store"]
    assert not list(out.glob(".vpd-bench-ray-*"))                 # the driver's marker is cleaned up
    # a Ray run is the same run as a local one: same losses
    local = tmp_path / "local"
    assert main(["run", "--methods", "grpo", "--seed", "0", "--model", "tiny-random", "--task", "debug",
                 "--steps", "2", "--out", str(local), *FAST]) == 0
    a, b = rows(out / "debug/grpo/none/seed0/metrics.jsonl"), rows(local / "debug/grpo/none/seed0/metrics.jsonl")
    for key in ("reward_mean", "response_len", "tokens_generated"):       # the same samples...
        assert [r[key] for r in a] == [r[key] for r in b]
    # ...and the same losses up to float summation order (the Ray task runs with OMP_NUM_THREADS=1)
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5, abs=1e-7)
    # a second call skips the completed runs without starting Ray
    assert main(["run", "--launcher", "ray", "--methods", "grpo", "--seeds", "2", "--model", "tiny-random",
                 "--task", "debug", "--steps", "2", "--out", str(out), *FAST]) == 0
    assert len(rows(out / "debug/grpo/none/seed0/ray_attempts.log")) == 1


def test_failed_run_is_retried_once_and_counted(tmp_path):
    from vpd_bench.launch.sweep import expand
    # a task with no training problems passes the config checks and fails when the trainer starts:
    # the run fails at every attempt
    specs = expand(["grpo"], ["debug"], None, [0], model="tiny-random", overrides=FAST + ["train.steps=1",
                   "task.num_train=0"], out=str(tmp_path))
    assert R.run_ray(specs, num_cpus=1, num_gpus=0) == 1
    run = specs[0].run_dir()
    assert len(rows(run / "ray_attempts.log")) == 2                # the first try and one retry
    assert "no training problems" in (run / "stdout.log").read_text()


def test_results_come_back_without_a_shared_filesystem(tmp_path, monkeypatch):
    """A worker that cannot see --out runs in scratch; the driver copies the results back."""
    from vpd_bench.launch.sweep import expand
    monkeypatch.setenv("VPD_BENCH_RAY_SCRATCH", str(tmp_path / "scratch"))
    spec = expand(["grpo"], ["debug"], None, [0], model="tiny-random", overrides=FAST + ["train.steps=1"],
                  out=str(tmp_path / "store"))[0]
    res = R.execute_run(dataclasses.asdict(spec), str(tmp_path / "no-such-marker"), 1)
    assert not res["shared"] and "results.json" in res["files"] and "metrics.jsonl" in res["files"]
    assert not spec.run_dir().exists()                            # nothing was written to the store itself
    assert str(tmp_path / "scratch") in res["run_dir"]


def test_resources_and_missing_ray(monkeypatch):
    from vpd_bench.launch.sweep import expand
    spec = expand(["grpo"], ["debug"], None, [0], model="tiny-random")[0]
    assert R.resources_for(spec, cluster_gpus=0) == (1, 0)
    assert R.resources_for(spec, cluster_gpus=8) == (1, 1)         # a GPU cluster: one GPU per run
    assert R.resources_for(spec, num_cpus=4, num_gpus=0.5, cluster_gpus=8) == (4, 0.5)
    monkeypatch.setenv("VPD_BENCH_RAY_NUM_GPUS", "0.25")
    assert R.resources_for(spec, cluster_gpus=8) == (1, 0.25)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'vpd-bench\[ray\]'"):
        R.import_ray()
