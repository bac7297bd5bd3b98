"""Sweep throughput: runs per hour with ``--jobs 2`` (two runs at a time, one thread each) against
``--jobs 1`` (one run at a time with every core's threads), on the same sweep.

Both sides run the same small sweep through the real CLI (``vpd-bench run``): GRPO on math with
the offline default model, S seeds, a few training steps of B 2 x G 2 and short responses, and
the smallest evaluation; only the parallel plan differs (``--jobs`` and, through it, the threads
per run, as ``parallel_plan`` chooses them: jobs x threads = cores). Repeats alternate
(jobs 1, jobs 2, jobs 1, ...), each into a fresh output folder, and the median wall time of
each side gives runs per hour. A ratio above 1 means the default plan (``--jobs auto``: one
single-threaded run per core) finishes a sweep sooner than one multi-threaded run at a time.

    python benchmarks/bench_sweep_throughput.py [--quick] [--repeats R] [--seeds S] [--steps N]

Target: reported (the issue asks for the figure, not a bound); above 1 on a 2-core machine.
Only meaningful on an otherwise idle machine: with other processes on the cores, two jobs
cannot get two cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def sweep_cmd(out: Path, jobs: int, seeds: int, steps: int, model: str) -> list[str]:
    return [sys.executable, "-m", "vpd_bench", "run", "--methods", "grpo", "--task", "math", "--model", model,
            "--seeds", str(seeds), "--steps", str(steps), "--jobs", str(jobs), "--out", str(out),
            "train.prompts_per_step=2", "train.group_size=2", "rollout.max_new_tokens=24",
            "train.checkpoint_every=1000", "eval.num_problems=2", "eval.samples=1", "eval.greedy=false"]


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="runs per sweep (default 4, quick 4)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 4, quick 2)")
    args = p.parse_args()
    C.quiet()
    seeds = args.seeds or 4
    steps = args.steps or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    # one untimed run first: converts / caches the model so that neither side pays for it
    scratch = Path(tempfile.mkdtemp(prefix="vpd-bench-sweep-"))
    try:
        subprocess.run(sweep_cmd(scratch / "warmup", 1, 1, 1, args.model), check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(repeats):
            for jobs in (1, 2):
                out = scratch / f"jobs{jobs}_r{r}"
                with C.Timer() as t:
                    proc = subprocess.run(sweep_cmd(out, jobs, seeds, steps, args.model), env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], file=sys.stderr)
                    raise SystemExit(f"the --jobs {jobs} sweep failed (exit {proc.returncode})")
                done = len(list(out.rglob("results.json")))
                if done != seeds:
                    raise SystemExit(f"the --jobs {jobs} sweep wrote {done} results, expected {seeds}")
                times[jobs].append(t.s)
                print(f"repeat {r + 1}/{repeats} --jobs {jobs}: {seeds} runs in {t.s:.1f} s "
                      f"({3600 * seeds / t.s:.1f} runs/h)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    per_hour = {j: 3600 * seeds / C.median(v) for j, v in times.items()}
    ratio = per_hour[2] / per_hour[1]
    C.save("sweep_throughput", {"settings": {"seeds": seeds, "steps": steps, "repeats": repeats, "cores": cores,
                                             "quick": args.quick},
                                "machine": C.machine(), "seconds": times, "runs_per_hour": per_hour,
                                "ratio_jobs2_vs_jobs1": ratio})
    print(f"settings: {seeds} GRPO runs of {steps} steps (math, B 2 x G 2, 24 tokens), {repeats} interleaved "
          f"repeat(s), {cores} core(s); --jobs 1 runs one at a time with {cores} thread(s), --jobs 2 two at a time "
          f"with {max(1, cores // 2)} thread(s) each; load average at start {os.getloadavg()[0]:.2f}")
    print("runs per hour (median): " + ", ".join(f"--jobs {j} {v:.1f}" for j, v in per_hour.items()))
    print(C.result_line("sweep_throughput_jobs2_vs_jobs1", ratio, "reported"))


if __name__ == "__main__":
    main()
