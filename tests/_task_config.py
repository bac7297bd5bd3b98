"""The run config a task family sees in its unit tests: its own YAML defaults plus seed and setting."""
from omegaconf import OmegaConf


def task_cfg(conf_path, setting="instruct", **fields):
    task = OmegaConf.load(conf_path)
    for key, value in fields.items():
        OmegaConf.update(task, key, value, merge=False)
    return OmegaConf.create({"seed": 0, "setting": setting, "task": task})
