"""Bad input: a clear one-line error, exit 2, and nothing created (issue 14 §3)."""
import pytest

from vpd_bench.cli import main

RUN = ["run", "--methods", "sdpo", "--task", "debug", "--model", "tiny-random"]


@pytest.mark.parametrize("args,message", [
    (["train.lr=abc"], "train.lr = 'abc' is not valid: it must be a number"),
    (["--steps", "-1"], "train.steps = -1 is not valid: it must be a whole number >= 1"),
    (["train.steps=2.5"], "train.steps = 2.5 is not valid: it must be a whole number"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["train.group_size=0"], "train.group_size = 0"),
    (["rollout.temperature=0"], "rollout.temperature = 0 is not valid: it must be a number > 0"),
    (["rollout.top_p=1.5"], "rollout.top_p = 1.5"),
    (["method.alpha=2"], "method.alpha = 2 is not valid: it must be a number >= 0 and <= 1"),
    (["method.teacher=emma"], "one of live, ema, frozen, trust_region, trained"),
    (["train.lr_schedule=cosin"], "one of constant, linear, cosine"),
    (["eval.greedy=maybe"], "eval.greedy = 'maybe' is not valid: it must be true or false"),
    (["eval.split=test"], "one of heldout, validation"),
    (["teacher_prompt.truncation=middle"], "one of left, right, error"),
    (["train.micro_batch_size=-4"], "train.micro_batch_size = -4"),
    (["--model", "./no_such_model_folder"], "model folder './no_such_model_folder' does not exist"),
])
def test_bad_values_are_one_line_errors_and_create_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "runs"
    rc = main([*RUN, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_vpd_keys_are_checked_too(tmp_path, capsys):
    rc = main(["run", "--methods", "vpd", "--task", "debug", "--model", "tiny-random", "--out", str(tmp_path / "r"),
               "method.estep_every=0"])
    assert rc == 2 and "method.estep_every = 0" in capsys.readouterr().err


def test_out_pointing_at_a_file_is_an_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*RUN, "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_out_that_cannot_be_written_is_an_error(tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    assert main([*RUN, "--out", str(tmp_path / "ro" / "runs")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "ro").exists()


def test_a_non_utf8_completion_is_an_error(tmp_path, capsys):
    bad = tmp_path / "c.py"
    bad.write_bytes(b'def f():\n    return "\xff\xfe"\n')
    assert main(["verify", "--task", "debug", "--problem", "debug-0", "--completion", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_every_default_config_passes_its_own_checks():
    from vpd_bench.config import compose, group_options
    for method in group_options("method"):
        for preset in group_options("preset"):
            compose(method, "debug", model="tiny-random", preset=preset)
