"""`vpd-bench eval`: a run's checkpoint or a model on a held-out split, and the lm-eval export."""
import json

import yaml

from vpd_bench.cli import main


def test_eval_run_and_export(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--methods", "grpo", "--task", "math", "--model", "tiny-random", "--steps", "1",
                 "--out", str(out), "rollout.max_new_tokens=8", "eval.samples=0", "eval.num_problems=2"]) == 0
    capsys.readouterr()
    run = out / "math" / "grpo" / "none" / "seed0"
    assert main(["eval", "--run", str(run), "--export", str(tmp_path / "exp"), "eval.num_problems=3",
                 "eval.max_new_tokens=8"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nexported")[0])
    assert report["checkpoint_step"] == 1 and report["metrics"]["n_problems"] == 3 and "greedy" in report["metrics"]
    spec = yaml.safe_load((tmp_path / "exp" / "vpd_bench_math.yaml").read_text())
    rows = [json.loads(x) for x in (tmp_path / "exp" / "heldout.jsonl").read_text().splitlines()]
    assert spec["dataset_path"] == "json" and spec["dataset_kwargs"]["data_files"]["test"].endswith("heldout.jsonl")
    assert len(rows) == 3 and all("prompt" in r and "answer" in r for r in rows)
    assert (tmp_path / "exp" / "model" / "config.json").exists()


def test_eval_model_on_task(capsys):
    assert main(["eval", "--model", "tiny-random", "--task", "debug", "eval.num_problems=2", "eval.samples=2",
                 "eval.max_new_tokens=6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint_step"] == 0 and set(report["metrics"]) >= {"pass@1", "pass@k", "avg@k", "greedy"}


def test_eval_without_arguments_is_a_clear_error(capsys):
    assert main(["eval"]) == 2
    assert "--run" in capsys.readouterr().err
