"""Our GRPO step against TRL's GRPOTrainer: same model, prompts, G, max new tokens, one on-policy step.

Both sides, in one process, on the offline default model (SmolLM2-135M-Instruct, float32):
B prompts of the debug task x G samples, N new tokens per sample at fixed length (TRL:
``generation_kwargs={"min_new_tokens": N}``; ours: EOS ignored), temperature 1, no top-k/top-p,
one generation and one optimizer step per training step (TRL: ``num_iterations=1``,
``steps_per_generation=1``, a per-device batch of B*G completions; ours: ``ppo_epochs=1``, one
micro-batch of B*G), no KL term (``beta=0`` / ``kl_coef=0``), no gradient checkpointing and no bf16
on either side (TRL's defaults turn both on; we turn them off so both do the same arithmetic).

The steps interleave: a TRL callback runs our step(s) right after each TRL step, so the two share
the machine's state. Step times: TRL from ``on_step_begin`` to ``on_step_end`` (generation, reward,
loss, backward, optimizer); ours ``step_time_s`` of ``Trainer.train_step`` (the same stages). The
first step of each is a warm-up and is not counted. Ours runs twice per round: with the default
engine (decoding with the float32 training weights) and with ``engine.dtype=bfloat16`` (a bf16
decode copy, see bench_rollout.py for its log-prob drift).

    python benchmarks/bench_grpo_vs_trl.py [--quick] [--threads N] [--repeats R]

Needs the bench extra: pip install 'trl==1.16.0' psutil
Target: our step time <= 0.5 x TRL's.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--tokens", type=int, default=None, help="max new tokens (default 48, quick 32)")
    p.add_argument("--fused-adamw", action="store_true",
                   help="what-if: give our trainer torch's fused AdamW kernel (not the harness default)")
    args = p.parse_args()
    C.require("trl", "datasets", "psutil")
    C.setup_threads(args.threads)
    C.quiet()
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from vpd_bench.models.loading import load_model

    B, G = args.B, args.G
    N = args.tokens or (32 if args.quick else 48)
    repeats = args.repeats or (3 if args.quick else 5)
    steps = repeats + 1                      # + one warm-up step on each side
    lr = 2e-6

    ours = C.trainer("grpo", [f"train.prompts_per_step={B}", f"train.group_size={G}", f"rollout.max_new_tokens={N}",
                              f"train.micro_batch_size={B * G}", f"train.lr={lr}", "train.grad_clip=1.0",
                              "method.kl_coef=0.0", "method.ppo_epochs=1", f"train.steps={2 * steps}"],
                     model=args.model)
    if args.fused_adamw:
        o = ours.optimizer
        ours.optimizer = torch.optim.AdamW(o.param_groups[0]["params"], lr=lr, betas=o.defaults["betas"],
                                           weight_decay=o.defaults["weight_decay"], fused=True)
        ours.scheduler = torch.optim.lr_scheduler.LambdaLR(ours.optimizer, ours._lr_factor)
    # the same prompts, in the same order, as plain (already chat-rendered) strings for TRL
    problems = [pr for s in range(1, steps + 1) for pr in ours.sample_problems(s)]
    from vpd_bench.training.teacher_prompt import render_prompt
    texts = [render_prompt(ours.tokenizer, ours.task.render_prompt(pr), ours.chat) for pr in problems]
    ds = Dataset.from_dict({"prompt": texts, "answer": [pr.answer for pr in problems]})

    def reward(prompts, completions, answer, **kw):     # the debug task's verifier
        return [float(a in c) for c, a in zip(completions, answer)]

    trl_loaded = load_model(ours.cfg.model)
    trl_model = trl_loaded.model
    trl_gen_s = []
    plain_generate = trl_model.generate

    def timed_generate(*a, **k):                       # TRL's time inside model.generate
        t0 = time.perf_counter()
        out = plain_generate(*a, **k)
        trl_gen_s.append(time.perf_counter() - t0)
        return out
    trl_model.generate = timed_generate

    variants = {"ours_fp32_decode": None, "ours_bf16_decode": "bfloat16"}
    times = {"trl": [], **{k: [] for k in variants}}
    parts = {k: [] for k in variants}
    counter = {"step": 0}

    def our_steps():
        for name, dtype in variants.items():
            ours.engine.dtype = None if dtype is None else getattr(torch, dtype)
            counter["step"] += 1
            m = ours.train_step(counter["step"])
            times[name].append(m["step_time_s"])
            parts[name].append({k: m[k] for k in ("generate_s", "update_s")})

    class Interleave(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times["trl"].append(time.perf_counter() - self.t0)
            our_steps()
            r = len(times["trl"])
            print(f"round {r}/{steps}{' (warm-up)' if r == 1 else ''}: TRL {times['trl'][-1]:.2f} s "
                  f"(generate {trl_gen_s[-1]:.2f} s), " +
                  ", ".join(f"{k} {v[-1]:.2f} s (generate {parts[k][-1]['generate_s']:.2f} s)"
                            for k, v in times.items() if k != "trl"), flush=True)

    targs = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=B * G, num_generations=G,
        max_completion_length=N, generation_kwargs={"min_new_tokens": N}, temperature=1.0, top_p=1.0, top_k=0,
        num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1, beta=0.0, learning_rate=lr,
        max_grad_norm=1.0, max_steps=steps, bf16=False, gradient_checkpointing=False, use_cpu=True,
        shuffle_dataset=False, logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    trainer = GRPOTrainer(model=trl_model, reward_funcs=reward, args=targs, train_dataset=ds,
                          processing_class=trl_loaded.tokenizer, callbacks=[Interleave()])
    trainer.train()

    med = {k: C.median(v[1:]) for k, v in times.items()}
    trl_gen = C.median(trl_gen_s[1:])
    ours_gen = {k: C.median([x["generate_s"] for x in v[1:]]) for k, v in parts.items()}
    ratio_fp32, ratio_bf16 = med["ours_fp32_decode"] / med["trl"], med["ours_bf16_decode"] / med["trl"]
    C.save("grpo_vs_trl_fused_adamw" if args.fused_adamw else "grpo_vs_trl", {
        "settings": {"B": B, "G": G, "tokens": N, "repeats": repeats, "quick": args.quick},
                           "machine": C.machine(), "step_s": times, "trl_generate_s": trl_gen_s, "ours_parts": parts,
                           "median_step_s": med, "ratio_fp32_decode": ratio_fp32, "ratio_bf16_decode": ratio_bf16})
    print(f"settings: B={B} G={G} new tokens={N} (fixed length), {repeats} measured rounds after 1 warm-up, "
          f"{torch.get_num_threads()} thread(s){', ours with fused AdamW (what-if)' if args.fused_adamw else ''}")
    print(f"median step: TRL {med['trl']:.2f} s (generate {trl_gen:.2f} s), "
          f"ours {med['ours_fp32_decode']:.2f} s (generate {ours_gen['ours_fp32_decode']:.2f} s), "
          f"ours with bf16 decode {med['ours_bf16_decode']:.2f} s (generate {ours_gen['ours_bf16_decode']:.2f} s)")
    print(C.result_line("grpo_step_bf16_decode_vs_trl", ratio_bf16, "<= 0.5"))
    print(C.result_line("grpo_step_vs_trl", ratio_fp32, "<= 0.5"))


if __name__ == "__main__":
    main()
