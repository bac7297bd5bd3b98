"""`vpd-bench eval`: score a run's final checkpoint, or any model, on a task's held-out split;
optionally export the weights and an lm-eval task (local JSONL) to score them with lm-eval offline."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vpd_bench.config import compose, whole_eval_file
from vpd_bench.rollout.engine import HFEngine
from vpd_bench.errors import UserError
from vpd_bench.evaluation.policy import evaluate_policy
from vpd_bench.models.loading import load_model
from vpd_bench.evaluation.results import CONFIG_FILE, SAMPLES_FILE, atomic_write_text
from vpd_bench.training.store import RunStore, load_weights
from vpd_bench.training.teacher_prompt import encode_prompt, render_prompt


def load_run(run_dir: Path, overrides=()):
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    if overrides:
        cfg = whole_eval_file(OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides))), overrides)
    loaded = load_model(cfg.model)
    store = RunStore(run_dir)
    ckpt = store.latest_checkpoint()
    if ckpt is None:
        raise UserError(f"{run_dir} has no checkpoint to evaluate (was it run with train.keep_checkpoints=0?); "
                        f"its held-out scores over training are in {run_dir / 'eval.jsonl'}")
    state = store.load_checkpoint(ckpt)
    model_state = state.get("model")            # None: the weights are the checkpoint's model folder
    if cfg.train.lora.enabled:
        from peft import LoraConfig, get_peft_model
        lc = cfg.train.lora
        target = lc.target_modules if isinstance(lc.target_modules, str) else list(lc.target_modules)
        loaded.model = get_peft_model(loaded.model, LoraConfig(r=int(lc.r), lora_alpha=int(lc.alpha),
                                                               lora_dropout=float(lc.dropout), target_modules=target))
    if model_state is not None:
        loaded.model.load_state_dict(model_state)
    else:
        load_weights(loaded.model, ckpt)
    if cfg.train.lora.enabled:
        loaded.model = loaded.model.merge_and_unload()
    return cfg, loaded, int(state["step"])


def eval_main(args) -> int:
    from vpd_bench.tasks import build_task
    if args.run:
        cfg, loaded, step = load_run(Path(args.run), args.overrides)
    elif args.model and args.task:
        cfg = compose(task=args.task, model=args.model, overrides=args.overrides)
        loaded, step = load_model(cfg.model), 0
    else:
        raise UserError("give --run RUN_DIR, or --model NAME and --task TASK")
    task = build_task(cfg)
    chat = bool(cfg.model.chat) and cfg.task.prompt_format == "chat" and cfg.setting != "cold_start"
    tok = loaded.tokenizer
    loaded.model.eval()

    def encode(text):
        return encode_prompt(tok, render_prompt(tok, text, chat))

    problems = task.eval_problems()
    if int(cfg.eval.num_problems) > 0:
        problems = problems[:int(cfg.eval.num_problems)]
    engine = HFEngine(loaded.model, tok)
    records: list[dict] = []
    with torch.no_grad():
        metrics = evaluate_policy(engine, encode, task, problems, cfg.eval, seed=int(cfg.seed) * 7_000_003 + 999,
                                  stop=list(cfg.rollout.stop), step=step or 0, records=records)
    report = {"task": cfg.task.name, "model": cfg.model.name, "run": args.run, "checkpoint_step": step,
              "metrics": metrics}
    if task.eval_file:                           # a user's own held-out problems: path, sha256, rows
        report["eval_file"] = task.eval_file.record()
    print(json.dumps(report, indent=2))
    if args.export:
        export(Path(args.export), cfg, loaded, task, problems, chat, records)
        atomic_write_text(Path(args.export) / SAMPLES_FILE,
                          "".join(json.dumps(r) + "\n" for r in records))
    return 0


def export_evalplus(out: Path, cfg, problems, records: list[dict]) -> None:
    """``samples.jsonl`` in evalplus's format (sanitised programs, one line per sample, every
    evaluated problem) and, for ``task.source=evalplus``, the evaluated subset of the release file
    with the command that scores the samples offline."""
    from vpd_bench.tasks.code import evalplus_dataset_rows, evalplus_samples
    samples = evalplus_samples(problems, records)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in samples))
    data = evalplus_dataset_rows(cfg, problems)
    if data is None:
        print(f"exported {out / 'samples.jsonl'} ({len(samples)} samples); score them with evalplus against "
              f"the HumanEval+/MBPP+ release whose task ids they carry")
        return
    env, rows = data
    name = "MbppPlus.jsonl" if env.startswith("MBPP") else "HumanEvalPlus.jsonl"
    atomic_write_text(out / name, "".join(json.dumps(r) + "\n" for r in rows))
    dataset = "mbpp" if env.startswith("MBPP") else "humaneval"
    print(f"exported {out / 'samples.jsonl'} ({len(samples)} samples over {len(rows)} problems); score offline:\n"
          f"  {env}={(out / name).resolve()} python -m evalplus.evaluate --dataset {dataset} "
          f"--samples {(out / 'samples.jsonl').resolve()}")


LM_EVAL_UTILS = '''"""lm-eval hooks written by `vpd-bench eval --export`: score with vpd-bench's own verifier.

lm-eval must run in an environment where vpd-bench is installed (e.g. its .venv, with
`pip install 'lm-eval[hf]'`). The task is rebuilt from task_config.yaml beside this file, so the
problems, extraction (lenient / strict), equivalence (math-verify, sympy) and the code sandbox are
exactly the harness's.
"""
import functools
from pathlib import Path

HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _task():
    from omegaconf import OmegaConf

    from vpd_bench.tasks import build_task
    task = build_task(OmegaConf.load(HERE / "task_config.yaml"))
    return task, {p.id: p for p in task.eval_problems()}


def process_results(doc, results):
    task, problems = _task()
    verdict = task.verify(problems[doc["id"]], results[0], split="eval")
    return {"exact_match": float(verdict.reward >= 1.0)}
'''


def export(out: Path, cfg, loaded, task, problems, chat: bool, records: list[dict] | None = None) -> None:
    """Weights (safetensors) + tokenizer + an lm-eval task YAML over a local JSONL of the held-out
    problems, scored by ``utils.process_results``: the harness's own verifier. The code task
    exports evalplus samples of this evaluation instead of a YAML (``export_evalplus``)."""
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    if cfg.task.name == "code":
        export_evalplus(out, cfg, problems, records or [])
        return
    rows = []
    for p in problems:
        text = task.render_prompt(p)
        rows.append({"id": p.id, "prompt": render_prompt(loaded.tokenizer, text, chat),
                     "answer": p.answer if isinstance(p.answer, (str, int, float)) else json.dumps(p.answer, default=str)})
    data = out / "heldout.jsonl"
    atomic_write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
    stop = loaded.tokenizer.eos_token or "\n\n"
    name = f"vpd_bench_{cfg.task.name}"
    yaml = f"""# lm-eval task over vpd-bench's held-out split of `{cfg.task.name}` (local file, works offline).
# Run: lm_eval --model hf --model_args pretrained={model_dir.resolve()} --include_path {out.resolve()} --tasks {name}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data.resolve()}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: [{json.dumps(stop)}]
  max_gen_toks: {int(cfg.eval.max_new_tokens)}
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    atomic_write_text(out / f"{name}.yaml", yaml)
    # lm-eval scores with the harness's own verifier (extraction, equivalence, sandbox), so its
    # per-problem verdicts equal vpd-bench's: utils.py rebuilds the task from the exported config
    atomic_write_text(out / "task_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(out / "utils.py", LM_EVAL_UTILS)
    print(f"exported {model_dir} and {out / (name + '.yaml')} ({len(rows)} held-out problems)")
