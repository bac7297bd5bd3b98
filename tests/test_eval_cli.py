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
    # lm-eval's `!function` tag is not plain YAML: read the file with the tag dropped
    spec = yaml.safe_load((tmp_path / "exp" / "vpd_bench_math.yaml").read_text().replace("!function ", ""))
    assert spec["process_results"] == "utils.process_results" and (tmp_path / "exp" / "utils.py").exists()
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


def test_exported_process_results_gives_the_harness_verdict(tmp_path, capsys):
    """lm-eval scores an export with utils.process_results, which must agree with vpd-bench's verifier on
    boxed, unboxed, negative, decimal and fractional answers (the old regex + exact_match did not)."""
    import importlib.util

    from vpd_bench.config import compose
    from vpd_bench.tasks import build_task
    exp = tmp_path / "exp"
    assert main(["eval", "--model", "tiny-random", "--task", "math", "--export", str(exp), "eval.num_problems=4",
                 "eval.samples=0", "eval.max_new_tokens=4"]) == 0
    capsys.readouterr()
    spec = importlib.util.spec_from_file_location("exported_utils", exp / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert "!function utils.process_results" in (exp / "vpd_bench_math.yaml").read_text()
    task = build_task(compose(task="math", model="tiny-random", overrides=["eval.num_problems=4"]))
    problems = {p.id: p for p in task.eval_problems()}
    rows = [json.loads(x) for x in (exp / "heldout.jsonl").read_text().splitlines()]
    checked = 0
    for row in rows:
        gold = str(problems[row["id"]].answer)
        for response in [f"\\boxed{{{gold}}}", f"So the answer is {gold}.", f"\\boxed{{-{gold}}}",
                         f"\\boxed{{{gold}.0}}", f"\\boxed{{\\frac{{{gold}}}{{1}}}}", f"\\boxed{{{gold}}}5",
                         f"\\boxed{{{{{gold}}}}}", "\\boxed{1.5}", "no answer"]:
            want = float(task.verify(problems[row["id"]], response, split="eval").reward >= 1.0)
            assert utils.process_results(row, [response]) == {"exact_match": want}, response
            checked += 1
    assert checked == 9 * len(rows)
    assert any(utils.process_results(r, [f"\\boxed{{{problems[r['id']].answer}}}"])["exact_match"] == 1.0 for r in rows)
