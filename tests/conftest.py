import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = ["rollout.max_new_tokens=12", "train.prompts_per_step=2", "train.group_size=4", "eval.num_problems=4",
        "eval.samples=2", "train.checkpoint_every=1"]


@pytest.fixture
def tiny_cfg():
    from vpd_bench.config import compose

    def make(method="grpo", task="debug", feedback=None, overrides=()):
        return compose(method, task, feedback, model="tiny-random", overrides=TINY + list(overrides))
    return make


@pytest.fixture
def make_trainer(tiny_cfg, tmp_path):
    from vpd_bench.training.loop import Trainer

    def make(method="grpo", feedback=None, overrides=(), run_dir=None):
        cfg = tiny_cfg(method, feedback=feedback, overrides=overrides)
        return Trainer(cfg, run_dir or tmp_path / f"run-{method}", progress=False)
    return make
