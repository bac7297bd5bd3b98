"""Rollout throughput: our HF engine against a plain ``model.generate`` call on the same batch.

Same B prompts x G samples, same sampling (temperature 1, no top-k/top-p), same number of new
tokens: generation is fixed-length on both sides (``min_new_tokens`` for ``generate``,
``ignore_eos`` for the engine), so both produce exactly B*G*N tokens. Interleaved repeats:
generate, engine (float32), engine (bfloat16 decode copy), generate, ...

The engine's advantages: each prompt is encoded once and its KV cache shared by its G samples,
finished rows leave the batch (not exercised at fixed length), inverse-CDF sampling (one
uniform per row instead of torch.multinomial's V exponentials), and optionally a bf16 copy of
the weights to decode from (``engine.dtype=bfloat16``), re-synced after each update. The bf16
copy changes the rollout log-probs: their drift against float32 scoring is measured here.

A fourth side, ``forward_floor``, is the bare float32 decode: the same prompt prefill (shared by
the G samples) and N single-token forward passes of the model with its KV cache, with no
attention mask, no sampling and no bookkeeping. No float32 decoding loop can be faster than the
forward passes it must run, so ``rollout_forward_floor_fp32_vs_generate`` is the ceiling of
``rollout_engine_fp32_vs_generate`` on this machine.

    python benchmarks/bench_rollout.py [--quick] [--threads N] [--repeats R]

Target: engine tokens/s >= 1.5 x generate's.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def prompts_for(cfg, tokenizer, B: int) -> list[list[int]]:
    from vpd_bench.tasks import build_task
    from vpd_bench.training.teacher_prompt import render_prompt
    task = build_task(cfg)
    problems = task.train_problems()[:B]
    return [tokenizer.encode(render_prompt(tokenizer, task.render_prompt(p), True), add_special_tokens=False)
            for p in problems]


def plain_generate_fn(model, tok, prompts: list[list[int]], G: int, N: int):
    """``seed -> output``: plain ``model.generate`` on the B prompts x G samples, left-padded, sampled
    at temperature 1 with exactly N new tokens (``min_new_tokens``): the baseline every engine is
    compared with."""
    import torch
    width = max(len(x) for x in prompts)
    rows = [x for x in prompts for _ in range(G)]
    ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in rows])
    attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows])

    def plain_generate(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=N, min_new_tokens=N, pad_token_id=tok.pad_token_id)
        assert out.shape[1] - width == N
        return out
    return plain_generate


def forward_floor_fn(model, tok, prompts: list[list[int]], G: int, N: int):
    """``() -> None``: the forward passes a float32 decode of N tokens cannot avoid: one prefill of
    the B left-padded prompts, the cache repeated for the G samples, then N - 1 single-token steps
    (the first token comes from the prefill's logits). No mask, no sampling, no bookkeeping."""
    import torch
    width = max(len(x) for x in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in prompts])

    def floor():
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            cache.batch_repeat_interleave(G)
            step = torch.zeros((len(prompts) * G, 1), dtype=torch.long)
            for _ in range(N - 1):
                cache = model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
    return floor


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--G", type=int, default=4)
    p.add_argument("--tokens", type=int, default=None, help="new tokens per sample (default 128, quick 64)")
    args = p.parse_args()
    C.setup_threads(args.threads)
    C.quiet()
    import torch

    from vpd_bench.config import compose
    from vpd_bench.rollout.engine import HFEngine
    from vpd_bench.models.loading import load_model
    from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs

    N = args.tokens or (64 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)
    cfg = compose("grpo", "debug", model=args.model)
    loaded = load_model(cfg.model)
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = prompts_for(cfg, tok, args.B)
    G, B = args.G, args.B
    n_tokens = B * G * N

    plain_generate = plain_generate_fn(model, tok, prompts, G, N)

    engines = {"engine_fp32": HFEngine(model, tok), "engine_bf16": HFEngine(model, tok, dtype="bfloat16")}
    floor = forward_floor_fn(model, tok, prompts, G, N)
    # warm-up (first-touch allocations, the bf16 copy): not timed
    plain_generate(0)
    floor()
    for e in engines.values():
        e.generate(prompts, G, 4, seed=0, ignore_eos=True)

    times = {"generate": [], "engine_fp32": [], "engine_bf16": [], "forward_floor": []}
    gens = {}
    for r in range(repeats):
        with C.Timer() as t:
            plain_generate(r + 1)
        times["generate"].append(t.s)
        for name, e in engines.items():
            with C.Timer() as t:
                gens[name] = e.generate(prompts, G, N, seed=r + 1, ignore_eos=True)
            assert all(len(x) == N for x in gens[name].response_ids)
            times[name].append(t.s)
        with C.Timer() as t:
            floor()
        times["forward_floor"].append(t.s)
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {n_tokens / v[-1]:.1f} tok/s" for k, v in times.items()),
              flush=True)
    tps = {k: n_tokens / C.median(v) for k, v in times.items()}

    # log-prob drift of the bf16 decode copy against float32 scoring of the same tokens
    def drift(gen):
        packed = pack([x for x in prompts for _ in range(G)], gen.response_ids, tok.pad_token_id)
        with torch.no_grad():
            ref = token_log_probs(response_logits(model, packed), packed.response_ids)
        d = torch.tensor(gen.logprobs) - ref
        return {"mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()), "mean": float(d.mean()),
                "is_weight_mean_abs_dev": float((d.exp() - 1).abs().mean()),
                "seq_logp_mean_abs": float(d.sum(-1).abs().mean())}
    drift_bf16, drift_fp32 = drift(gens["engine_bf16"]), drift(gens["engine_fp32"])

    ratio_fp32, ratio_bf16 = tps["engine_fp32"] / tps["generate"], tps["engine_bf16"] / tps["generate"]
    ratio_floor = tps["forward_floor"] / tps["generate"]
    C.save("rollout", {"settings": {"B": B, "G": G, "tokens": N, "repeats": repeats, "quick": args.quick},
                       "machine": C.machine(), "seconds": times, "tokens_per_s": tps,
                       "ratio_engine_fp32": ratio_fp32, "ratio_engine_bf16": ratio_bf16,
                       "ratio_forward_floor_fp32": ratio_floor,
                       "drift_bf16": drift_bf16, "drift_fp32": drift_fp32})
    print(f"settings: B={B} G={G} new tokens={N} (fixed length), {repeats} interleaved repeats, "
          f"{torch.get_num_threads()} thread(s)")
    print("tokens/s (median): " + ", ".join(f"{k} {v:.1f}" for k, v in tps.items()))
    print(f"log-prob drift of the bf16 decode copy vs float32 scoring, per token: mean |d| "
          f"{drift_bf16['mean_abs']:.4f}, max |d| {drift_bf16['max_abs']:.3f}, mean d {drift_bf16['mean']:+.4f}; "
          f"importance weight |exp(d)-1| {drift_bf16['is_weight_mean_abs_dev']:.4f}; "
          f"per sequence |sum d| {drift_bf16['seq_logp_mean_abs']:.3f}  "
          f"(float32 engine: mean |d| {drift_fp32['mean_abs']:.1e})")
    print(f"the float32 engine runs at {tps['engine_fp32'] / tps['forward_floor']:.2f}x the bare forward passes' "
          f"tokens/s (1.00 = no overhead left to remove)")
    print(C.result_line("rollout_forward_floor_fp32_vs_generate", ratio_floor, "reported"))
    print(C.result_line("rollout_engine_fp32_vs_generate", ratio_fp32, ">= 1.5"))
    print(C.result_line("rollout_engine_bf16_vs_generate", ratio_bf16, ">= 1.5"))


if __name__ == "__main__":
    main()
