"""Scaling: GRPO step time against the group size G and against the response length.

One Trainer (GRPO, debug task, the offline default model, default engine), fixed-length
generation (EOS ignored) so that a response has exactly the length asked for, one micro-batch
per step. Two sweeps, each point timed after a warm-up step, repeats interleaved over the points:

- G in (2, 4, 8, 16) at a fixed response length;
- response length in (64, 128, 256, 512) at a fixed G.

For each sweep the log-log slope of step time (and of its generate / update parts) against the
swept variable is fitted by least squares: 1 means linear growth, below 1 sub-linear. The plot
goes to benchmarks/results/scaling.png, the numbers to benchmarks/results/scaling.json.

    python benchmarks/bench_scaling.py [--quick] [--threads N] [--repeats R]

Targets (ours; the issue asks for the plot and the exponent): no worse than linear in G or in
length, i.e. both exponents <= 1.1.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "G", "group size G"), (axes[1], "length", "response length (tokens)")):
        sweep = results[key]
        xs = sweep["x"]
        for part, style in (("step", "o-"), ("generate", "s--"), ("update", "^--")):
            ys = sweep["median"][part]
            ax.plot(xs, ys, style, label=f"{part} (slope {sweep['slope'][part]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        ax.set_title(f"GRPO step vs {key} ({sweep['fixed']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("vpd-bench GRPO step time, SmolLM2-135M, CPU; log-log slope = fitted exponent", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--Gs", default="2,4,8,16")
    p.add_argument("--lengths", default="64,128,256,512")
    p.add_argument("--B", type=int, default=None, help="prompts per step (default 2, quick 1)")
    args = p.parse_args()
    C.setup_threads(args.threads)
    C.quiet()
    import torch

    Gs = [int(x) for x in args.Gs.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    B = args.B or (1 if args.quick else 2)
    fixed_len = 32 if args.quick else 64          # response length of the G sweep
    fixed_G = 2 if args.quick else 4              # G of the length sweep
    repeats = args.repeats or (1 if args.quick else 2)

    t = C.trainer("grpo", [f"train.prompts_per_step={B}", f"train.group_size={fixed_G}",
                           f"rollout.max_new_tokens={fixed_len}", "train.steps=1000"], model=args.model)
    counter = {"step": 0}

    def run(G, N):
        t.cfg.train.group_size = G
        t.cfg.train.micro_batch_size = B * G
        t.cfg.rollout.max_new_tokens = N
        counter["step"] += 1
        m = t.train_step(counter["step"])
        return {"step": m["step_time_s"], "generate": m["generate_s"], "update": m["update_s"]}

    run(Gs[0], fixed_len)                           # warm-up: optimizer state, first-touch pages
    points = [("G", G, (G, fixed_len)) for G in Gs] + [("length", N, (fixed_G, N)) for N in lengths]
    raw = {("G", G): [] for G in Gs} | {("length", N): [] for N in lengths}
    for r in range(repeats):
        for key, x, (G, N) in points:
            res = run(G, N)
            raw[(key, x)].append(res)
            print(f"repeat {r + 1}/{repeats} {key}={x:<4d} (G={G}, length={N}): step {res['step']:.2f} s "
                  f"(generate {res['generate']:.2f}, update {res['update']:.2f})", flush=True)

    results = {}
    for key, xs, fixed in (("G", Gs, f"B={B}, length {fixed_len}"), ("length", lengths, f"B={B}, G={fixed_G}")):
        med = {part: [C.median([x[part] for x in raw[(key, v)]]) for v in xs] for part in ("step", "generate", "update")}
        results[key] = {"x": xs, "fixed": fixed, "median": med,
                        "slope": {part: slope(xs, ys) for part, ys in med.items()}}
    png = C.RESULTS / "scaling.png"
    plot(results, png)
    C.save("scaling", {"settings": {"B": B, "Gs": Gs, "lengths": lengths, "fixed_length": fixed_len,
                                    "fixed_G": fixed_G, "repeats": repeats, "quick": args.quick},
                       "machine": C.machine(), "results": results,
                       "raw": {f"{k}={x}": v for (k, x), v in raw.items()}})
    print(f"settings: B={B}; G sweep at length {fixed_len}, length sweep at G={fixed_G}; {repeats} repeat(s); "
          f"{torch.get_num_threads()} thread(s); plot: {png.relative_to(C.ROOT)}")
    for key in ("G", "length"):
        r = results[key]
        print(f"vs {key}: " + ", ".join(f"{x}: {s:.2f} s" for x, s in zip(r["x"], r["median"]["step"])) +
              "; exponents: " + ", ".join(f"{part} {v:.2f}" for part, v in r["slope"].items()))
    print(C.result_line("scaling_step_time_exponent_vs_G", results["G"]["slope"]["step"], "<= 1.1"))
    print(C.result_line("scaling_step_time_exponent_vs_length", results["length"]["slope"]["step"], "<= 1.1"))


if __name__ == "__main__":
    main()
