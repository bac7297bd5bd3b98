"""Scoring: how many passes the methods make, and what the top-k + tail divergence costs in memory.

1. Passes. For every method, one training step on the tiny in-process model with hooks on
   ``response_logits`` and on the model's forward: how many times each micro-batch is scored,
   and how many tokens go through the network compared with scoring every row in full. Each
   distribution is computed once per micro-batch (student with grad, teacher without), and the
   token log-probs, entropy, top-k support and importance weights all reuse those logits; rows
   that share a prompt (the G samples of a group) run it once.
2. Shared-prompt scoring on the real model: forward + backward of one micro-batch (G rows, one
   prompt), prompt run once per group vs once per row, interleaved repeats.
3. Memory of the token divergence (alpha = 0.5, the generalised JSD) on the student's top-k
   support plus a tail bucket, forward + backward, against a naive implementation that takes two
   full-vocabulary log-softmax tensors first, and against the full-vocabulary divergence. Each
   variant runs in a fresh subprocess; the figure is the peak RSS above the RSS with the inputs
   (student and teacher logits) already allocated. Shapes: [n, R, V] with V = 49152 (SmolLM2).

    python benchmarks/bench_scoring.py [--quick] [--threads N]

Targets (the issue asks for the figure; the thresholds are ours): peak memory of our top-k + tail
divergence <= 0.5 x the naive full-vocabulary divergence's, and < 1 x a naive top-k + tail that
first builds the two full-vocabulary log-softmax tensors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

V = 49152


# -- 3: memory of the divergence, one variant per subprocess ------------------------------------
def memory_child(variant: str, n: int, R: int, k: int) -> None:
    import torch

    from vpd_bench import losses as L
    torch.manual_seed(0)
    student = torch.randn(n, R, V).mul_(3).requires_grad_(True)
    teacher = torch.randn(n, R, V).mul_(3)
    mask = torch.ones(n, R)
    base = C.current_rss_mb()
    peak0 = C.peak_rss_mb()
    with C.Timer() as t:
        if variant == "ours_topk_tail":
            s_lp, t_lp = L.topk_with_tail(student, teacher, k)
        elif variant == "naive_topk_tail":
            s_full, t_full = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
            s_top, ids = torch.topk(s_full, k, dim=-1)
            t_top = t_full.gather(-1, ids)

            def tail(top):
                return torch.log1p(-top.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6))
            s_lp, t_lp = torch.cat([s_top, tail(s_top)], -1), torch.cat([t_top, tail(t_top)], -1)
        elif variant == "full_vocab":
            s_lp, t_lp = L.log_probs_full(student), L.log_probs_full(teacher)
        else:
            raise ValueError(variant)
        loss = (L.token_divergence(s_lp, t_lp, 0.5) * mask).sum() / mask.sum()
        loss.backward()
    out = {"variant": variant, "peak_above_inputs_mb": max(C.peak_rss_mb() - base, 0.0),
           "inputs_mb": 2 * n * R * V * 4 / 2**20, "seconds": t.s, "loss": float(loss.detach()),
           "peak_before_mb": peak0, "base_mb": base}
    print("RESULT " + json.dumps(out), flush=True)


def run_memory(variant: str, n: int, R: int, k: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")   # big blocks: mmap, returned at free
    cmd = [sys.executable, __file__, "--memory-child", variant, "--n", str(n), "--R", str(R), "--k", str(k),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{variant} failed:\n{proc.stderr[-2000:]}")


# -- 1: passes per micro-batch ----------------------------------------------------------------------
def count_passes() -> dict:
    import torch

    import vpd_bench.training.loop as loop_mod
    import vpd_bench.rollout.scoring as scoring
    import vpd_bench.training.teachers as teachers_mod
    out = {}
    for method in ("grpo", "sdpo", "sdft", "opsd", "vpd"):
        ov = ["train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=4",
              "rollout.max_new_tokens=16"]
        if method == "vpd":
            ov.append("method.estep_every=1")       # an E-step in the counted step
        t = C.trainer(method, ov, model="tiny-random", fixed=True)
        batch_counter = {"calls": 0, "rows": 0, "full_tokens": 0, "model_calls": 0, "model_tokens": 0}
        real = scoring.response_logits

        def counted(model, packed, *a, **k):
            batch_counter["calls"] += 1
            batch_counter["rows"] += packed.input_ids.shape[0]
            batch_counter["full_tokens"] += int(packed.input_ids.numel())
            return real(model, packed, *a, **k)

        models = [t.model] + [m for m in (getattr(t.teacher, "copy", None), getattr(t.reference, "copy", None),
                                          getattr(t.method, "initial_prior", None)) if m is not None]

        def hook(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:                          # inputs_embeds [n, L, H] (training: sparse embedding grad)
                ids = kwargs["inputs_embeds"][..., 0]
            batch_counter["model_calls"] += 1
            batch_counter["model_tokens"] += int(ids.numel())
        handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in models]
        for mod in (loop_mod, teachers_mod, scoring):
            setattr(mod, "response_logits", counted)
        try:
            batch = t.generate(1)                 # generation is not scoring: counted from here on
            for k in batch_counter:
                batch_counter[k] = 0
            t.verify(batch)
            t.build_teacher_context(batch)
            n_mb = -(-batch.num_responses // int(t.cfg.train.micro_batch_size))
            t.update_student(batch)
            m_step = dict(batch_counter)
            e_step = {}
            if method == "vpd":
                for k in batch_counter:
                    batch_counter[k] = 0
                t.method.after_update(batch, 1)
                e_step = dict(batch_counter)
        finally:
            for mod in (loop_mod, teachers_mod, scoring):
                setattr(mod, "response_logits", real)
            for h in handles:
                h.remove()
        out[method] = {"micro_batches": n_mb, "scoring_calls_per_micro_batch": m_step["calls"] / n_mb,
                       "tokens_vs_full_rows": m_step["model_tokens"] / max(m_step["full_tokens"], 1),
                       "m_step": m_step, "e_step": e_step}
        del t
        torch.manual_seed(0)
    return out


# -- 2: shared-prompt scoring on the real model -----------------------------------------------------
TEACHER_HEAD = ("Compute 27 + 15 - 8. Give the final answer in \\boxed{}.\n"
                "Here is a correct solution to this problem:\n27 + 15 = 42, and 42 - 8 = 34. "
                "The final answer is \\boxed{34}.\nFeedback on your earlier attempt:\n")
TEACHER_FEEDBACK = ["Your final answer 33 is incorrect.", "Your final answer 50 is incorrect.",
                    "No final answer was found in \\boxed{}.", "Your final answer 3 is incorrect."]


def shared_prompt_timing(args, repeats: int, teacher: bool = False) -> dict:
    """Forward + backward of G rows' response log-probs, each row scored in full vs shared.
    ``teacher=False``: the G rows share one student prompt (identical prompts). ``teacher=True``:
    a group's teacher prompts, which begin alike (problem + demonstration) and end in each row's
    own feedback (the shared-prefix path)."""
    import torch

    from vpd_bench.config import compose
    from vpd_bench.models.loading import load_model
    from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs
    from vpd_bench.training.teacher_prompt import render_prompt
    loaded = load_model(compose("grpo", "debug", model=args.model).model)
    model, tok = loaded.model.train(), loaded.tokenizer
    G, R = 4, (32 if args.quick else 64)
    if teacher:
        instruction = "\nUsing the above, solve the original problem again. Answer directly."
        prompts = [tok.encode(render_prompt(tok, TEACHER_HEAD + f + instruction, True), add_special_tokens=False)
                   for f in TEACHER_FEEDBACK[:G]]
    else:
        prompts = [tok.encode(render_prompt(tok, "Write a short word that contains the letter 'e'.", True),
                              add_special_tokens=False)] * G
    prompt = prompts[0]
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, 40000, (R,), generator=g).tolist() for _ in range(G)]
    packed = pack(prompts, responses, tok.pad_token_id)

    def step(share):
        model.zero_grad(set_to_none=True)
        with C.Timer() as t:
            lp = token_log_probs(response_logits(model, packed, share_prompts=share), packed.response_ids)
            lp.sum().backward()
        return t.s, lp.detach()
    step(True)
    times = {"per_row": [], "shared": []}
    for _ in range(repeats):
        s0, lp0 = step(False)
        s1, lp1 = step(True)
        times["per_row"].append(s0)
        times["shared"].append(s1)
    return {"G": G, "prompt_tokens": len(prompt), "response_tokens": R, "seconds": times, "teacher": teacher,
            "speedup": C.median(times["per_row"]) / C.median(times["shared"]),
            "max_abs_logp_diff": float((lp0 - lp1).abs().max())}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--memory-child", default=None, help=argparse_hidden())
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--R", type=int, default=None)
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    C.setup_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.n, args.R, args.k)
    C.require("psutil")
    C.quiet()
    R = args.R or (128 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 3)

    passes = count_passes()
    print("scoring passes per micro-batch (response_logits calls) and tokens through the model vs scoring "
          "every row in full:")
    for m, v in passes.items():
        e = v["e_step"]
        extra = (f"; E-step: {e['calls']} scoring calls over the buffer "
                 f"(prior + teacher per micro-batch)") if e else ""
        print(f"  {m:5s}: {v['scoring_calls_per_micro_batch']:.0f} per micro-batch, tokens "
              f"{v['tokens_vs_full_rows']:.2f}x of full rows{extra}")

    shared = shared_prompt_timing(args, repeats)
    print(f"shared-prompt scoring, real model, G={shared['G']} rows x ({shared['prompt_tokens']} prompt + "
          f"{shared['response_tokens']} response) tokens, forward+backward: per-row "
          f"{C.median(shared['seconds']['per_row']):.2f} s, shared {C.median(shared['seconds']['shared']):.2f} s "
          f"({shared['speedup']:.2f}x; max |d log p| {shared['max_abs_logp_diff']:.1e})")

    prefix = shared_prompt_timing(args, repeats, teacher=True)
    print(f"shared-prefix scoring (a group's teacher prompts: problem + demonstration, then each row's own "
          f"feedback), real model, G={prefix['G']} rows x (~{prefix['prompt_tokens']} prompt + "
          f"{prefix['response_tokens']} response) tokens, forward+backward: per-row "
          f"{C.median(prefix['seconds']['per_row']):.2f} s, shared prefix "
          f"{C.median(prefix['seconds']['shared']):.2f} s ({prefix['speedup']:.2f}x; max |d log p| "
          f"{prefix['max_abs_logp_diff']:.1e})")

    mem = {}
    for r in range(repeats):
        for variant in ("ours_topk_tail", "naive_topk_tail", "full_vocab"):
            res = run_memory(variant, args.n, R, args.k, args.threads)
            mem.setdefault(variant, []).append(res)
    peak = {v: C.median([x["peak_above_inputs_mb"] for x in xs]) for v, xs in mem.items()}
    secs = {v: C.median([x["seconds"] for x in xs]) for v, xs in mem.items()}
    one = args.n * R * V * 4 / 2**20
    print(f"divergence on [n={args.n}, R={R}, V={V}] logits (one such float32 tensor = {one:.0f} MiB), k={args.k}, "
          f"forward+backward, peak RSS above the inputs (median of {repeats}):")
    for v in peak:
        print(f"  {v:16s} {peak[v]:7.0f} MiB ({peak[v] / one:.1f} logits-sized tensors), {secs[v]:.2f} s")
    ratio = peak["ours_topk_tail"] / peak["naive_topk_tail"]
    C.save("scoring", {"settings": {"n": args.n, "R": R, "V": V, "k": args.k, "quick": args.quick},
                       "machine": C.machine(), "passes": passes, "shared_prompt": shared, "shared_prefix": prefix,
                       "memory": mem,
                       "peak_above_inputs_mb": peak, "seconds": secs, "ratio_vs_naive_topk": ratio,
                       "ratio_vs_full_vocab": peak["ours_topk_tail"] / peak["full_vocab"]})
    print(C.result_line("scoring_teacher_prefix_sharing_speedup", prefix["speedup"], "> 1"))
    print(C.result_line("scoring_peak_memory_vs_naive_topk", ratio, "< 1"))
    print(C.result_line("scoring_peak_memory_vs_naive_full_vocab", peak["ours_topk_tail"] / peak["full_vocab"],
                        "<= 0.5"))


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
