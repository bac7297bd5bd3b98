"""VPD's E-step micro-batches by group vs by length, on the E-step buffers of a real run (issue 12).

`method.estep_batching=group` (the default) keeps the rows of one problem in one E-step micro-batch,
so that `response_logits` runs their common teacher-prompt prefix (system prompt, problem,
demonstration) once and the prior pass runs their identical student prompt once; `length` (the
earlier behaviour) sorts the whole buffer by width, which mixes problems in a micro-batch so that
only the system prompt is shared. Same loss up to float rounding (tests/test_method_losses.py).

What it measures, on the logged samples of a VPD run (default: the committed cpu-preset tuning run
`vpd[lr=3e-6]`; `samples.jsonl` holds 2 whole groups x 4 responses of each step, so each window
buffer here is half the run's, with its group structure intact):
1. positions run through the model (`scoring.tokens_run`, no model needed) for every E-step buffer of
   the run, each way: the prior pass (student prompts), the teacher passes (teacher prompts);
2. unless ``--no-time``: wall time of one E-step's passes on the real model (prior forward, teacher
   forward-only for delta, teacher forward + backward), both ways interleaved, median of repeats.

    python benchmarks/bench_estep_batching.py --quick            # token counts + a timed E-step buffer
    python benchmarks/bench_estep_batching.py --no-time          # token counts only (seconds)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_RUN = C.ROOT / "results/cpu/tuning/math/vpd[lr=3e-6]/env+sibling/seed0"


def buffers(run_dir: Path, tokenizer, window: int) -> list[tuple[int, list[dict]]]:
    """(step of the E-step, items) for every E-step of the run: the logged samples of the last
    ``window`` steps that have a teacher prompt, tokenized as the trainer would."""
    rows = [json.loads(line) for line in open(run_dir / "samples.jsonl")]
    steps = sorted({r["step"] for r in rows})
    eos = tokenizer.eos_token_id
    out = []
    for k in steps:
        if k % window:
            continue
        items = []
        for r in rows:
            if k - window < r["step"] <= k and r.get("teacher_prompt"):
                resp = tokenizer.encode(r["response"], add_special_tokens=False)
                if r.get("finish_reason") == "eos" and eos is not None:
                    resp = resp + [eos]
                items.append({"prompt": tokenizer.encode(r["prompt"], add_special_tokens=False),
                              "teacher_prompt": tokenizer.encode(r["teacher_prompt"], add_special_tokens=False),
                              "response": resp})
        out.append((k, items))
    return out


def positions(items, batches, key) -> int:
    from vpd_bench.rollout.scoring import pack, tokens_run
    return sum(tokens_run(pack([items[i][key] for i in b], [items[i]["response"] for i in b], 0)) for b in batches)


def time_passes(model, items, batches, temperature: float) -> float:
    """One E-step's passes over the buffer: prior forward (student prompts, no grad), teacher forward
    (no grad, delta's pass), teacher forward + backward (the loss: here the sum of log-probs)."""
    import torch

    from vpd_bench.rollout.scoring import pack, response_logits, token_log_probs

    def logp(key, b):
        packed = pack([items[i][key] for i in b], [items[i]["response"] for i in b], 0)
        tok = token_log_probs(response_logits(model, packed, temperature), packed.response_ids)
        return (tok * packed.response_mask).sum()
    with C.Timer() as t:
        with torch.no_grad():
            for b in batches:
                logp("prompt", b)
                logp("teacher_prompt", b)
        for b in batches:
            logp("teacher_prompt", b).backward()
    model.zero_grad(set_to_none=True)
    return t.s


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="a VPD run folder with samples.jsonl and config.yaml")
    p.add_argument("--no-time", dest="time", action="store_false",
                   help="token counts only: do not time an E-step buffer on the real model")
    p.add_argument("--time-step", type=int, default=15, help="which E-step's buffer to time (default 15)")
    args = p.parse_args()
    C.setup_threads(args.threads)
    C.quiet()
    from omegaconf import OmegaConf

    from vpd_bench.config import compose
    from vpd_bench.methods.vpd import VPD
    from vpd_bench.models.loading import load_model
    run = Path(args.run)
    cfg = OmegaConf.load(run / "config.yaml")
    window = int(cfg.method.estep_every) if cfg.method.estep_buffer == "window" else 1
    mb = int(cfg.train.micro_batch_size)
    loaded = load_model(compose("vpd", "debug", model=args.model).model)
    tok = loaded.tokenizer
    bufs = buffers(run, tok, window)
    print(f"run {run} (window {window}, micro_batch_size {mb}); {len(bufs)} E-step buffers of its logged samples")
    print("step  rows  teacher positions (length -> group)   prior positions (length -> group)   micro-batches")
    tot = {"t_len": 0, "t_grp": 0, "p_len": 0, "p_grp": 0}
    for k, items in bufs:
        by_len = VPD._token_budget_batches(items, mb, by_group=False)
        by_grp = VPD._token_budget_batches(items, mb, by_group=True)
        t_len, t_grp = positions(items, by_len, "teacher_prompt"), positions(items, by_grp, "teacher_prompt")
        p_len, p_grp = positions(items, by_len, "prompt"), positions(items, by_grp, "prompt")
        for key, v in (("t_len", t_len), ("t_grp", t_grp), ("p_len", p_len), ("p_grp", p_grp)):
            tot[key] += v
        print(f"{k:4d}  {len(items):4d}  {t_len:7d} -> {t_grp:7d} ({t_grp / t_len:.3f})      "
              f"{p_len:7d} -> {p_grp:7d} ({p_grp / p_len:.3f})      {len(by_len)} -> {len(by_grp)}")
    t_ratio, p_ratio = tot["t_grp"] / tot["t_len"], tot["p_grp"] / tot["p_len"]
    # E-step cost in forward-position units: prior forward 1, teacher forward-only 1 (delta), teacher
    # forward + backward ~3
    est = (tot["p_grp"] + 4 * tot["t_grp"]) / (tot["p_len"] + 4 * tot["t_len"])
    print(f"all buffers: teacher positions {t_ratio:.3f}x, prior positions {p_ratio:.3f}x, "
          f"E-step forward-position units (prior 1 + teacher 4) {est:.3f}x")
    out = {"run": str(run), "teacher_positions_ratio": t_ratio, "prior_positions_ratio": p_ratio,
           "estep_position_units_ratio": est, **tot}
    if args.time:
        items = dict(bufs).get(args.time_step) or bufs[len(bufs) // 2][1]
        model = loaded.model
        model.train()
        temperature = float(cfg.rollout.temperature)
        ways = {"length": VPD._token_budget_batches(items, mb, by_group=False),
                "group": VPD._token_budget_batches(items, mb, by_group=True)}
        repeats = args.repeats or (2 if args.quick else 3)
        times = {w: [] for w in ways}
        for r in range(repeats):
            order = list(ways) if r % 2 == 0 else list(ways)[::-1]
            for w in order:
                times[w].append(time_passes(model, items, ways[w], temperature))
        med = {w: C.median(v) for w, v in times.items()}
        print(f"timed E-step passes on step {args.time_step}'s buffer ({len(items)} rows), median of {repeats}: "
              f"length {med['length']:.1f} s, group {med['group']:.1f} s")
        out.update(time_length_s=times["length"], time_group_s=times["group"], time_ratio=med["group"] / med["length"])
        print(C.result_line("estep_time_group_vs_length", med["group"] / med["length"], "< 1"))
    print(C.result_line("estep_positions_group_vs_length", est, "< 1"))
    C.save("estep_batching", {**out, **C.machine()})

if __name__ == "__main__":
    main()
