"""Sandbox throughput and overhead, measured side by side with a bare ``python -c pass``.

    python benchmarks/bench_sandbox.py [--quick] [--rounds N] [--workers W]

Per-execution latency (median of interleaved rounds: bare, bubblewrap, fallback in turn, so
machine load hits all three alike), parallel executions per second across all cores, and the
end-to-end rate of verifying HumanEval canonical solutions. The last line is the headline:

    sandbox_overhead: <bwrap median / bare median>x (target <=3x of bare python)
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpd_bench.sandbox import Call, Sandbox, SandboxLimits  # noqa: E402

PROGRAM = "def f(x):\n    return x + 1\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 15 s)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 40, quick 15)")
    ap.add_argument("--workers", type=int, default=0, help="parallel sandboxes (default: one per core)")
    args = ap.parse_args()
    rounds = args.rounds or (15 if args.quick else 40)

    conf = OmegaConf.load(ROOT / "vpd_bench" / "conf" / "task" / "code.yaml")
    limits = SandboxLimits.from_config(conf.sandbox)
    boxes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = Sandbox(conf.sandbox, workers=args.workers or None)
        if auto.backend == "bwrap":
            boxes["bwrap"] = auto
        else:
            print(f"note: bubblewrap unavailable ({auto.backend_note}); measuring the fallback only")
        boxes["fallback"] = Sandbox(limits=limits, backend="subprocess", workers=args.workers or None,
                                    python=auto.python)
        _ = boxes["fallback"].backend
    python = auto.python
    bare = [python, "-c", "pass"]

    def run_bare():
        subprocess.run(bare, check=True)

    def run_box(box):
        ex = box.run(PROGRAM, [Call("f", (41,))])
        assert ex.outcomes[0].value == 42, ex

    # warm up (page cache, bwrap self-check)
    for _ in range(3):
        run_bare()
        for box in boxes.values():
            run_box(box)

    lat = {"bare": []} | {name: [] for name in boxes}
    for _ in range(rounds):
        t = time.perf_counter()
        run_bare()
        lat["bare"].append(time.perf_counter() - t)
        for name, box in boxes.items():
            t = time.perf_counter()
            run_box(box)
            lat[name].append(time.perf_counter() - t)

    workers = auto.workers
    jobs = max(8, 6 * workers) if args.quick else max(32, 16 * workers)
    rate = {}
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run_bare(), range(jobs)))
    rate["bare"] = jobs / (time.perf_counter() - t)
    for name, box in boxes.items():
        t = time.perf_counter()
        results = box.run_many([(PROGRAM, [Call("f", (41,))])] * jobs)
        assert all(ex.outcomes[0].value == 42 for ex in results)
        rate[name] = jobs / (time.perf_counter() - t)

    med = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    print(f"interpreter: {python}; workers: {workers}; latency rounds: {rounds}; parallel jobs: {jobs}")
    print(f"{'':10s} {'median ms':>10s} {'min ms':>8s} {'x bare':>7s} {'execs/s':>8s}")
    for name in lat:
        print(f"{name:10s} {med[name]:10.1f} {min(lat[name]) * 1000:8.1f} {med[name] / med['bare']:7.2f} "
              f"{rate[name]:8.1f}")

    # end to end: verify HumanEval canonical solutions (all their tests) on the default backend
    from vpd_bench.tasks.code import CodeTask
    n = 16 if args.quick else 64
    cfg = OmegaConf.create({"seed": 0, "task": conf})
    t = time.perf_counter()
    task = CodeTask(cfg)
    problems = sorted(task.all_problems().values(), key=lambda p: int(p.id.split("/")[1]))[:n]
    build = time.perf_counter() - t
    t = time.perf_counter()
    verdicts = task.verify_batch(problems, [p.reference for p in problems], split="eval")
    spent = time.perf_counter() - t
    passed = sum(v.reward for v in verdicts)
    print(f"humaneval: task built in {build:.2f} s; verified {n} canonical solutions (all tests) in "
          f"{spent:.2f} s = {n / spent:.1f} verifications/s on {task.sandbox.backend}; {passed:.0f}/{n} passed")

    if "bwrap" in boxes:
        print(f"fallback_overhead: {med['fallback'] / med['bare']:.2f}x of bare python")
        print(f"sandbox_overhead: {med['bwrap'] / med['bare']:.2f}x (target <=3x of bare python)")
    else:
        print(f"sandbox_overhead: {med['fallback'] / med['bare']:.2f}x (fallback backend; target <=3x of bare python)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
