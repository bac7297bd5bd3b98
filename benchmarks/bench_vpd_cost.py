"""VPD's cost against SDPO: mean iteration time over F iterations (the E-step included) and peak RSS.

VPD's M-step *is* SDPO's loss with a live teacher, so the E-step is exactly what VPD adds: the
baseline is SDPO with ``method.teacher=live`` and the same teacher prompts (feedback env+sibling).
Every measurement runs in its own subprocess (so that peak RSS belongs to one variant), and the
subprocesses alternate SDPO, VPD (current buffer, fused), VPD (current buffer, exact), VPD (window
buffer), SDPO, ... Each child builds a Trainer on the debug task with the offline default model,
runs one warm-up iteration, then F timed iterations; with ``estep_every = F`` the timed window
holds exactly one E-step (over the last F iterations' rollouts with the window buffer), i.e. the
amortised cost a long run pays. Generation is fixed-length (EOS ignored) so all do the same work.

    python benchmarks/bench_vpd_cost.py [--quick] [--threads N] [--repeats R] [--F 5]

Targets (the paper: the E-step adds 30-55% wall time and no memory): current buffer <= 1.3x,
window buffer <= 1.55x, peak RSS <= 1.05x.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(args) -> None:
    C.setup_threads(args.threads)
    C.quiet()
    import torch
    if args.estep_split > 1:      # what-if: E-step micro-batches of micro_batch_size / estep_split sequences
        import vpd_bench.methods.vpd as vpd_module
        from vpd_bench.rollout.scoring import micro_batches
        vpd_module.micro_batches = lambda idx, size: micro_batches(idx, max(1, int(size) // args.estep_split))
    if args.child.endswith("_unshared"):     # the same variant without the teacher-prompt prefix sharing
        import vpd_bench.rollout.scoring as scoring
        scoring._shared_prefixes = lambda *a, **k: None
    t = C.trainer(VARIANTS[args.child][0], overrides(args), model=args.model)
    if args.child.startswith("vpd_window_lagged"):
        t.method.delta = 0.0     # a running delta exists, as at every E-step after a run's first
    times, parts = [], []
    for step in range(1, args.F + 2):
        m = t.train_step(step)
        if step > 1:     # step 1 is the warm-up (optimizer state allocation, first-touch pages)
            times.append(m["step_time_s"])
            parts.append({k: m.get(k) for k in ("generate_s", "update_s", "teacher_update_s", "estep_size")})
    out = {"method": args.child, "iter_times": times, "mean_iter_s": sum(times) / len(times), "parts": parts,
           "peak_rss_mb": C.peak_rss_mb(), "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(out), flush=True)


# the variants compared: name -> (method, overrides)
VARIANTS = {
    "sdpo": ("sdpo", ["method.teacher=live"]),
    "vpd_current": ("vpd", ["method.estep_buffer=current", "method.estep_fused=true", "method.estep_probe=0"]),
    "vpd_current_exact": ("vpd", ["method.estep_buffer=current", "method.estep_probe=0"]),
    "vpd_window": ("vpd", ["method.estep_buffer=window", "method.estep_probe=0"]),
    # the window buffer with method.delta_timing=after_loss: no forward-only pass for delta
    "vpd_window_lagged": ("vpd", ["method.estep_buffer=window", "method.estep_probe=0",
                                  "method.delta_timing=after_loss"]),
    # ... and with method.prior_timing=rollout: the prior is the M-step's student log-probs of each
    # response's own iteration, so the E-step runs neither the forward-only pass nor the prior pass
    "vpd_window_lagged_rollout_prior": ("vpd", ["method.estep_buffer=window", "method.estep_probe=0",
                                                "method.delta_timing=after_loss", "method.prior_timing=rollout"]),
}
# --prefix-ablation: the variants again with the teacher prompts' common prefix run per row (as
# before the prefix sharing of rollout/scoring.py), to see what the sharing does to whole iterations
UNSHARED = {f"{name}_unshared": VARIANTS[name] for name in ("sdpo", "vpd_window_lagged")}
VARIANTS.update(UNSHARED)


def overrides(args) -> list[str]:
    ov = [f"train.prompts_per_step={args.B}", f"train.group_size={args.G}",
          f"rollout.max_new_tokens={args.tokens}", f"train.micro_batch_size={args.G}",
          f"train.steps={args.F + 1}"]
    ov += VARIANTS[args.child][1]
    if args.child.startswith("vpd"):
        ov.append(f"method.estep_every={args.F}")
        ov += args.vpd_override
    return ov


def run_child(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--threads", str(args.threads), "--F", str(args.F),
           "--estep-split", str(args.estep_split), *[f"--vpd-override={o}" for o in args.vpd_override],
           "--B", str(args.B), "--G", str(args.G), "--tokens", str(args.tokens), "--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{method} child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse_hidden())
    p.add_argument("--F", type=int, default=None, help="iterations per E-step (method.estep_every); default 5, quick 2")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--tokens", type=int, default=None, help="new tokens per response; default 48, quick 32")
    p.add_argument("--vpd-override", action="append", default=[],
                   help="extra config override for the VPD runs only (repeatable), e.g. method.estep_lr=5e-6")
    p.add_argument("--estep-split", type=int, default=1,
                   help="what-if: split VPD's E-step micro-batches N ways (teacher prompts are ~2x the student's "
                        "sequence length, so 2 gives the E-step the M-step's tokens per micro-batch)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of the variants to run (sdpo, the baseline, is always run), "
                        f"from: {', '.join(v for v in VARIANTS if not v.endswith('_unshared'))}")
    p.add_argument("--prefix-ablation", action="store_true",
                   help="also run sdpo and vpd_window_lagged without the teacher-prompt prefix sharing")
    args = p.parse_args()
    if not args.prefix_ablation and not args.child:
        for name in UNSHARED:
            del VARIANTS[name]
    if args.variants and not args.child:
        keep = {"sdpo", *[v.strip() for v in args.variants.split(",") if v.strip()]}
        unknown = keep - set(VARIANTS)
        if unknown:
            p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
        for name in list(VARIANTS):
            if name not in keep:
                del VARIANTS[name]
    args.F = args.F or (2 if args.quick else 5)
    args.tokens = args.tokens or (32 if args.quick else 48)
    if args.child:
        return child(args)
    C.require("psutil")
    repeats = args.repeats or (1 if args.quick else 3)
    runs = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name in VARIANTS:
            res = run_child(name, args)
            runs[name].append(res)
            print(f"repeat {r + 1}/{repeats} {name:17s}: mean iteration {res['mean_iter_s']:.2f} s "
                  f"(iterations {', '.join(f'{x:.2f}' for x in res['iter_times'])}), "
                  f"peak RSS {res['peak_rss_mb']:.0f} MiB", flush=True)
    t = {m: C.median([x["mean_iter_s"] for x in v]) for m, v in runs.items()}
    rss = {m: C.median([x["peak_rss_mb"] for x in v]) for m, v in runs.items()}
    # per-repeat ratios too: each group ran back to back, so its ratio shares the machine's state
    pair = {name: [v["mean_iter_s"] / b["mean_iter_s"] for b, v in zip(runs["sdpo"], runs[name])]
            for name in VARIANTS if name != "sdpo"}
    ratio = {name: t[name] / t["sdpo"] for name in VARIANTS if name != "sdpo"}
    # the memory target is the default VPD (window buffer, exact E-step); the fused E-step trades
    # memory (the batch's teacher graph is held until the E-step backward) for time: reported apart
    rss_ratio = rss["vpd_window"] / rss["sdpo"] if "vpd_window" in rss else None
    rss_fused = rss["vpd_current"] / rss["sdpo"] if "vpd_current" in rss else None
    whatif = args.estep_split > 1 or args.vpd_override
    C.save("vpd_cost" + ("_whatif" if whatif else "") + ("_subset" if args.variants else ""), {
        "settings": {"F": args.F, "B": args.B, "G": args.G, "tokens": args.tokens, "quick": args.quick,
                     "repeats": repeats, "estep_split": args.estep_split, "vpd_override": args.vpd_override,
                     "variants": VARIANTS},
        "machine": C.machine(), "runs": runs, "median_iter_s": t, "median_peak_rss_mb": rss,
        "time_ratio": ratio, "pair_ratios": pair, "rss_ratio": rss_ratio, "rss_ratio_fused": rss_fused})
    print(f"settings: B={args.B} G={args.G} tokens={args.tokens} F={args.F}, {repeats} interleaved repeat(s), "
          f"{runs['sdpo'][0]['threads']} thread(s)"
          + (f", what-if: E-step micro-batches split {args.estep_split} ways" if args.estep_split > 1 else "")
          + (f", VPD overrides {' '.join(args.vpd_override)}" if args.vpd_override else ""))
    for name in VARIANTS:
        estep = max((x["teacher_update_s"] or 0.0) for x in runs[name][-1]["parts"])
        print(f"  {name:17s} mean iteration {t[name]:.2f} s, peak RSS {rss[name]:.0f} MiB, "
              f"slowest teacher-update stage {estep:.2f} s"
              + (f", per-repeat ratios vs sdpo {', '.join(f'{x:.2f}' for x in pair[name])}" if name in pair else ""))
    lines = [("vpd_iteration_time_vs_sdpo_current_exact", ratio.get("vpd_current_exact"), "<= 1.3"),
             ("vpd_peak_rss_vs_sdpo", rss_ratio, "<= 1.05"),
             ("vpd_fused_peak_rss_vs_sdpo", rss_fused, "<= 1.05"),
             ("vpd_iteration_time_vs_sdpo_window_lagged_delta", ratio.get("vpd_window_lagged"), "<= 1.55"),
             ("vpd_iteration_time_vs_sdpo_window_lagged_rollout_prior", ratio.get("vpd_window_lagged_rollout_prior"),
              "<= 1.55"),
             ("vpd_iteration_time_vs_sdpo_window", ratio.get("vpd_window"), "<= 1.55"),
             ("vpd_iteration_time_vs_sdpo_current", ratio.get("vpd_current"), "<= 1.3")]
    for name, value, target in lines:
        if value is not None:       # a variant left out with --variants has no line
            print(C.result_line(name, value, target))
    if args.prefix_ablation:
        for name in UNSHARED:
            base = name[:-len("_unshared")]
            print(C.result_line(f"prefix_sharing_speedup_{base}", t[name] / t[base], "> 1"))
        print(C.result_line("vpd_iteration_time_vs_sdpo_window_lagged_delta_unshared",
                            t["vpd_window_lagged_unshared"] / t["sdpo_unshared"], "<= 1.55"))


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
