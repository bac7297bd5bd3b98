import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from vpd_bench.cli import main
from vpd_bench.config import CONF_DIR, compose, feedback_cli_names, group_options
from vpd_bench.errors import UserError


@pytest.mark.parametrize("group", ["method", "task", "feedback", "model", "engine", "preset"])
def test_every_config_file_composes(group):
    for option in group_options(group):
        kw = {"method": "grpo", "task": "debug"}
        if group == "model" and option == "hf":
            cfg = compose(model="hf", overrides=["model.path=/nonexistent/folder"])
        elif group == "feedback":
            cfg = compose(feedback=OmegaConf.load(CONF_DIR / "feedback" / f"{option}.yaml").name)
        elif group in ("method", "task"):
            kw[group] = option
            cfg = compose(**kw)
        else:
            cfg = compose(**{group: option})
        # resolving every interpolation catches a broken default
        OmegaConf.to_container(cfg, resolve=True)


def test_every_sweep_expands():
    from vpd_bench.launch.sweep import expand, load_sweep
    for name in group_options("sweep"):
        sw = load_sweep(name)
        specs = expand(sw.get("methods", ["grpo"])[:1], sw.get("tasks", ["debug"])[:1], sw.get("feedback"),
                       [0], "tiny-random", sw.get("preset"), None, sw.get("overrides", []), "runs", sw.get("grid"),
                       sw.get("variants"))
        assert specs, name


def test_misspelt_key_names_the_key_and_the_fix():
    with pytest.raises(UserError, match=r"train\.lrr.*Did you mean 'train\.lr'"):
        compose(overrides=["train.lrr=1e-5"])
    with pytest.raises(UserError, match="bogus_key"):
        compose(overrides=["bogus_key=1"])


def test_unknown_names_get_did_you_mean():
    with pytest.raises(UserError, match="Did you mean 'grpo'"):
        compose(method="gpro")
    with pytest.raises(UserError, match="Did you mean 'code'"):
        compose(task="cod")
    with pytest.raises(UserError, match=r"Did you mean 'env\+sibling'"):
        compose(feedback="env-sibling")


def test_cli_exits_nonzero_with_message(capsys):
    assert main(["run", "--methods", "grpo", "--task", "code", "--bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err
    assert main(["run", "--methods", "gpro", "--task", "code"]) == 2
    assert "Did you mean 'grpo'" in capsys.readouterr().err
    assert main(["validate", "--methods", "grpo", "--task", "debug", "train.lrr=1"]) == 2


def test_method_defaults_follow_method_md():
    vpd = compose("vpd", "sciqa").method
    assert (vpd.estep_every, vpd.prior, vpd.beta, vpd.delta_momentum, vpd.length_norm, vpd.estep_buffer) == \
        (5, "student", 0.1, 0.9, "sum", "window")
    assert vpd.teacher == "trained" and vpd.alpha == 0.5 and vpd.support == "topk" and vpd.topk == 20
    assert compose("sdpo", "code").method.alpha == 1.0 and compose("sdpo", "math").method.alpha == 0.5
    sdpo = compose("sdpo", "code").method
    assert sdpo.teacher == "ema" and sdpo.teacher_tau == 0.05 and sdpo.is_clip == 2.0
    sdft = compose("sdft", "code").method
    assert (sdft.context, sdft.teacher, sdft.teacher_tau, sdft.alpha) == ("reference", "ema", 0.01, 0.0)
    opsd = compose("opsd", "code").method
    assert (opsd.context, opsd.teacher, opsd.alpha) == ("reference", "frozen", 0.5)
    grpo = compose("grpo").method
    assert (grpo.scale_by_std, grpo.clip_low, grpo.clip_high, grpo.ppo_epochs, grpo.kl_coef) == (True, 0.2, 0.2, 1, 0.0)
    assert compose("dr_grpo").method.scale_by_std is False
    cfg = compose()
    assert cfg.train.success_threshold == 1.0 and cfg.teacher_prompt.truncation == "left"
    assert cfg.feedback.name == "env+sibling" and cfg.model.name == "smollm2-135m"


def test_ls_lists_every_name(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ["grpo", "dr_grpo", "sdpo", "sdft", "opsd", "vpd", "code", "math", "sciqa", "cold_start", "debug",
                 "env", "sibling", "self_critique", "hint", "env+sibling", "noisy", "smollm2-135m", "tiny-random",
                 "qwen2.5-coder-0.5b", "quick", "paper"]:
        assert f"  {name} " in out, name
    assert set(feedback_cli_names()) >= {"env", "sibling", "self_critique", "hint", "env+sibling", "noisy"}


def test_validate_prints_plan_and_runs_nothing(tmp_path, capsys):
    rc = main(["validate", "--methods", "vpd,grpo", "--task", "debug", "--model", "tiny-random", "--seeds", "2",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "plan: 4 run(s)" in out and "debug/vpd/env+sibling/seed1" in out and "debug/grpo/none/seed0" in out
    assert not any(tmp_path.iterdir())


def test_methods_and_tasks_install_under_the_vpd_bench_namespace(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('methods'), u.find_spec('tasks'), " \
           "u.find_spec('vpd_bench.methods') is not None, u.find_spec('vpd_bench.tasks') is not None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "None", "True", "True"]


def test_wheel_installs_methods_and_tasks_under_vpd_bench(tmp_path):
    """A wheel holds vpd_bench/methods, vpd_bench/tasks, the configs and fixtures, and no top-level
    `methods` or `tasks` package."""
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("vpd_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for must in ["vpd_bench/methods/vpd.py", "vpd_bench/tasks/code.py", "vpd_bench/conf/config.yaml",
                 "vpd_bench/rollout/engine.py", "vpd_bench/training/loop.py", "vpd_bench/evaluation/results.py",
                 "vpd_bench/launch/sweep.py", "vpd_bench/report/summary.py", "vpd_bench/models/common.py",
                 "vpd_bench/conf/method/vpd.yaml", "vpd_bench/tasks/fixtures/code/mbpp.jsonl",
                 "vpd_bench/tasks/fixtures/math/gsm8k.jsonl"]:
        assert must in names, must
    assert not any(n.startswith(("methods/", "tasks/")) for n in names)


def test_ctrl_c_saves_a_checkpoint_and_resume_completes(tmp_path):
    import json
    import signal
    import time
    out = tmp_path / "I"
    args = ["run", "--methods", "grpo", "--task", "debug", "--model", "tiny-random", "--out", str(out),
            "train.checkpoint_every=1000", "rollout.max_new_tokens=24", "eval.samples=0", "eval.greedy=false"]
    # SIGINT back to its default in the child: a suite started in the background (`cmd &`) runs with
    # SIGINT ignored, which the child would inherit and Python would then never turn into Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "vpd_bench", *args, "--steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = out / "debug" / "grpo" / "none" / "seed0"
    deadline = time.time() + 90
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and
                                          len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()                   # never leave a training process running after the test
        raise
    assert proc.returncode == 130, err
    assert "--resume" in err
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert (run / "checkpoints" / "LATEST").read_text().strip() == f"step_{done:06d}"
    assert json.loads((run / "results.json").read_text())["status"] == "partial"
    assert main([*args, "--steps", str(done + 2), "--resume"]) == 0
    assert json.loads((run / "results.json").read_text())["steps_completed"] == done + 2


def test_sweep_variants_run_each_named_override_set_once_per_method_it_names():
    from vpd_bench.launch.sweep import expand
    variants = [{"name": "teacher=live", "methods": ["sdpo"], "overrides": ["method.teacher=live"]},
                {"name": "teacher=ema", "methods": ["sdpo", "vpd"], "overrides": ["method.teacher=ema"]},
                {"name": "beta=1", "methods": ["vpd"], "overrides": ["method.beta=1.0"]},
                {"name": "plain", "overrides": []}]
    specs = expand(["sdpo", "vpd"], ["debug"], ["env"], [0, 1], "tiny-random", None, None, ["train.steps=2"],
                   "runs", None, variants)
    got = [(s.seed, s.method, s.grid_label) for s in specs]
    assert got == [(seed, m, v) for seed in (0, 1) for m, v in
                   [("sdpo", "teacher=live"), ("sdpo", "teacher=ema"), ("sdpo", "plain"),
                    ("vpd", "teacher=ema"), ("vpd", "beta=1"), ("vpd", "plain")]]
    by = {(s.seed, s.method, s.grid_label): s for s in specs}
    assert by[(0, "vpd", "beta=1")].compose().method.beta == 1.0
    assert by[(0, "sdpo", "teacher=ema")].compose().method.teacher == "ema"
    assert by[(0, "sdpo", "teacher=live")].overrides == ["train.steps=2", "method.teacher=live"]
    dirs = {str(s.run_dir()) for s in specs}
    assert len(dirs) == len(specs) and "runs/debug/vpd[beta=1]/env/seed1" in dirs


@pytest.mark.parametrize("variants,grid,match", [
    ([{"name": "a", "overrides": []}], {"train.lr": [1e-5]}, "either a 'grid' or 'variants'"),
    ([{"name": "a", "methods": ["sdp0"], "overrides": []}], None, "unknown method.*sdp0.*Did you mean 'sdpo'"),
    ([{"name": "a", "overrides": ["method.beta=1"]}, {"name": "a", "overrides": ["method.beta=2"]}], None,
     "two sweep variants named 'a'"),
    ([{"name": "a", "override": []}], None, "unknown field.*override"),
    ([{"overrides": []}], None, "needs a 'name'"),
    ([{"name": "a/b", "overrides": []}], None, "slash"),
    ([{"name": "a", "overrides": "method.beta=1"}], None, "list of strings"),
])
def test_bad_sweep_variants_are_clear_errors(variants, grid, match):
    from vpd_bench.launch.sweep import expand
    with pytest.raises(UserError, match=match):
        expand(["vpd"], ["debug"], ["env"], [0], "tiny-random", None, None, [], "runs", grid, variants)


def test_a_misspelt_sweep_key_is_named(tmp_path, monkeypatch):
    import vpd_bench.launch.sweep as sweep_mod
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text("methods: [grpo]\nvariant:\n  - {name: a, overrides: []}\n")
    monkeypatch.setattr(sweep_mod, "CONF_DIR", tmp_path)
    with pytest.raises(UserError, match=r"unknown sweep key\(s\) variant.*Did you mean 'variants'"):
        sweep_mod.load_sweep("mine")
