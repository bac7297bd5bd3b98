"""Teacher-prompt prefix sharing inside real training iterations: every teacher pass A/B-timed in place.

On the cpu preset's arithmetic (env+sibling feedback, B 2 x G 4 and 32 tokens with --quick, else the
preset's B 4 x G 4 and 64), `rollout/scoring.py` runs the common prefix of a group's teacher prompts once (`_shared_prefixes`).
Whole-iteration timings of two separate runs cannot resolve a saving of a few percent on a shared
machine (their generation, which the change does not touch, can differ by 30%), so this script
times the change where it acts: it runs real SDPO and VPD iterations (window buffer, lagged delta)
and, for every `response_logits` call of the loop that takes the prefix path, runs the same batch
once more each way (as before the prefix sharing: identical prompts once, the rest in full; and as
now), alternating which goes first: a forward under no_grad for the
no-grad calls, forward + backward (`torch.autograd.grad`, which leaves the model's `.grad` alone)
for the calls that train. The loop itself runs unchanged. Reported: the time of the teacher passes each way,
their ratio, and the saving as a share of the iteration time (the loop's own step time, minus
this script's extra passes).

    python benchmarks/bench_prefix_sharing.py --quick
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def measure(method: str, overrides: list[str], steps: int, model: str) -> dict:
    import torch

    import vpd_bench.rollout.scoring as S
    original = S.response_logits
    acc = {"unshared": 0.0, "shared": 0.0, "calls_prefix": 0, "extra": 0.0, "prompt_tokens": 0,
           "saved_tokens": 0}

    real_prefixes = S._shared_prefixes

    def one(model_, packed, args, kwargs, share: bool) -> float:
        """share=False: scoring as before the prefix sharing existed (identical prompts still run
        once, everything else in full); share=True: as the loop scores it now."""
        if not share:
            S._shared_prefixes = lambda *a, **k: None
        try:
            t0 = time.perf_counter()
            if torch.is_grad_enabled():
                out = original(model_, packed, *args, **kwargs)
                params = [p for p in model_.parameters() if p.requires_grad]
                torch.autograd.grad(out.float().logsumexp(-1).sum(), params, allow_unused=True)
            else:
                original(model_, packed, *args, **kwargs)
            return time.perf_counter() - t0
        finally:
            S._shared_prefixes = real_prefixes

    def timed(model_, packed, *args, **kwargs):
        if kwargs.get("share_prompts", True):
            prefixes = S.sharing_plan(packed)[1]
            if prefixes is not None:                     # a pass that takes the prefix path
                t0 = time.perf_counter()
                order = (False, True) if acc["calls_prefix"] % 2 == 0 else (True, False)
                for share in order:
                    acc["shared" if share else "unshared"] += one(model_, packed, args, kwargs, share)
                acc["calls_prefix"] += 1
                acc["prompt_tokens"] += sum(len(p) for p in prefixes[0])
                acc["saved_tokens"] += S._prefix_saving(prefixes)
                acc["extra"] += time.perf_counter() - t0
        return original(model_, packed, *args, **kwargs)

    import tempfile

    from vpd_bench.config import compose
    from vpd_bench.training.loop import Trainer
    # the tuning's own setting: the cpu preset's arithmetic with env+sibling feedback, responses as
    # sampled (teacher prompts differ by row only where their feedback does)
    cfg = compose(method, "math", "env+sibling" if method != "sdft" else None, model=model, preset="cpu",
                  overrides=overrides)
    t = Trainer(cfg, tempfile.mkdtemp(prefix=f"bench-{method}-"), progress=False)
    patched = [mod for mod in list(sys.modules.values())
               if mod is not None and getattr(mod, "response_logits", None) is original]
    for mod in patched:                 # scoring itself and every module that imported the function
        mod.response_logits = timed
    try:
        if method == "vpd":
            t.method.delta = 0.0        # a running delta exists, as at every E-step after a run's first
        step_times, start = [], None
        for step in range(1, steps + 1):
            if step == 2:               # step 1 is the warm-up: the A/B sums start here
                start = dict(acc)
            before = acc["extra"]
            m = t.train_step(step)
            if step > 1:
                step_times.append(m["step_time_s"] - (acc["extra"] - before))
    finally:
        for mod in patched:
            mod.response_logits = original
    d = {k: acc[k] - start[k] for k in acc}
    per_iter = sum(step_times) / len(step_times)
    return {"method": method, "iteration_s": per_iter, "teacher_unshared_s": d["unshared"],
            "teacher_shared_s": d["shared"], "prefix_calls": d["calls_prefix"], "prompt_tokens": d["prompt_tokens"],
            "saved_prompt_tokens": d["saved_tokens"], "measured_steps": len(step_times),
            "speedup": d["unshared"] / d["shared"] if d["shared"] else float("nan"),
            "saving_share": (d["unshared"] - d["shared"]) / len(step_times) / per_iter}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="iterations per method, the first a warm-up (default 3; "
                                                      "VPD's E-step every steps-1 iterations)")
    args = p.parse_args()
    C.setup_threads(args.threads)
    C.quiet()
    steps = max(2, args.steps)
    tokens = 32 if args.quick else 64
    base = ["train.prompts_per_step=2" if args.quick else "train.prompts_per_step=4", "train.group_size=4",
            f"rollout.max_new_tokens={tokens}", f"train.steps={steps}", "eval.validation_problems=0"]
    runs = {
        "sdpo": measure("sdpo", base + ["method.teacher=live"], steps, args.model),
        "vpd_window_lagged": measure("vpd", base + ["method.estep_buffer=window", "method.estep_probe=0",
                                                    "method.delta_timing=after_loss",
                                                    f"method.estep_every={steps - 1}"], steps, args.model),
    }
    C.save("prefix_sharing", {"settings": {"steps": steps, "tokens": tokens, "quick": args.quick},
                              "machine": C.machine(), "runs": runs})
    for name, r in runs.items():
        print(f"{name:18s} teacher passes on the prefix path: {r['prefix_calls']} calls (the batch's prompt "
              f"tokens {r['prompt_tokens']}, {r['saved_prompt_tokens']} saved), unshared {r['teacher_unshared_s']:.2f} s, "
              f"shared {r['teacher_shared_s']:.2f} s ({r['speedup']:.2f}x); iteration {r['iteration_s']:.2f} s, "
              f"saving {100 * r['saving_share']:.1f}% of it")
    for name, r in runs.items():
        print(C.result_line(f"prefix_sharing_teacher_pass_speedup_{name}", r["speedup"], "> 1"))


if __name__ == "__main__":
    main()
