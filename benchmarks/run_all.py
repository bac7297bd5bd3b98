"""Run every benchmark in turn and print a summary of their result lines.

    python benchmarks/run_all.py [--quick] [--threads N] [--only rollout,scoring]

Each benchmark runs in its own process (its figures and peak memory are its own) and prints its
result last as ``<name>: <ratio> (target <target>)``; this script collects those lines, marks
each as met / missed, writes benchmarks/results/summary.json and exits 0 (a benchmark is a
measurement, not a test). ``--quick`` keeps the suite under 10 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402
ORDER = ["rollout", "grpo_vs_trl", "vpd_cost", "scoring", "prefix_sharing", "estep_batching", "scaling",
         "sweep_throughput"]
LINE = re.compile(r"^(?P<name>[A-Za-z0-9_]+): (?P<value>[-+0-9.eE]+|nan) \(target (?P<target>[^)]*)\)\s*$")


def met(value: float, target: str) -> bool | None:
    m = re.match(r"\s*(<=|>=|<|>)\s*([-+0-9.eE]+)", target)
    if not m or value != value:
        return None
    op, bound = m.group(1), float(m.group(2))
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="passed to every benchmark (default: theirs, 1)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ORDER)}")
    args = p.parse_args()
    names = args.only.split(",") if args.only else ORDER
    extra = (["--quick"] if args.quick else []) + (["--threads", str(args.threads)] if args.threads is not None else [])
    summary, t_all = [], time.perf_counter()
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"=== {script.name} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(script), *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            if line.startswith("{'train_runtime'"):     # TRL's own end-of-training dict
                continue
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        rc = proc.wait()
        secs = time.perf_counter() - t0
        results = [m.groupdict() for m in (LINE.match(x) for x in lines) if m]
        if rc != 0 or not results:
            summary.append({"benchmark": name, "name": f"bench_{name}", "value": None, "target": None,
                            "met": None, "seconds": secs, "error": f"exit status {rc}"})
        for r in results:
            v = float(r["value"])
            summary.append({"benchmark": name, "name": r["name"], "value": v, "target": r["target"],
                            "met": met(v, r["target"]), "seconds": secs})
        print(f"=== {script.name}: {secs:.0f} s\n", flush=True)
    total = time.perf_counter() - t_all
    cpu = C.cpu_features()
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary.json").write_text(json.dumps(
        {"quick": args.quick, "seconds": total, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **cpu,
         "results": summary}, indent=2) + "\n")
    print(f"summary ({total / 60:.1f} min{', quick' if args.quick else ''}; {cpu['cpu_model'] or 'CPU'}, "
          f"{', '.join(cpu['cpu_flags']) or 'no AVX flags read'}):")
    for s in summary:
        if s["value"] is None:
            print(f"  {s['name']}: FAILED ({s['error']})")
            continue
        mark = {True: "met", False: "MISSED", None: "-"}[s["met"]]
        print(f"  {s['name']}: {s['value']:.3f} (target {s['target']})  {mark}")


if __name__ == "__main__":
    main()
