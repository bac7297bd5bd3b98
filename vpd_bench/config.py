"""Config composition: Hydra's compose API over ``vpd_bench/conf`` in struct mode.

Every default lives in the YAML files of ``conf/``; this module only composes them, maps the
names users type onto config-group options, and turns Hydra's errors into messages that name
the problem and the fix ("did you mean ...").
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from vpd_bench.errors import UserError

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("method", "task", "feedback", "model", "engine", "preset")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def feedback_option(cli_name: str) -> str:
    """CLI feedback names (``env+sibling``) to config-group option names (``env_sibling``)."""
    return cli_name.replace("+", "_")


def feedback_cli_names() -> list[str]:
    return [OmegaConf.load(CONF_DIR / "feedback" / f"{o}.yaml").name for o in group_options("feedback")]


def _check_name(group: str, name: str, extra: Iterable[str] = ()) -> None:
    options = group_options(group)
    shown = sorted(set(options) | set(extra))
    if group == "feedback":
        shown = feedback_cli_names()
        if feedback_option(name) in options:
            return
    elif name in options:
        return
    close = difflib.get_close_matches(name, shown, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(f"unknown {group} '{name}'.{hint} Known {group}s: {', '.join(shown)}. "
                    f"(`vpd-bench ls` lists them with their defaults.)")


def _looks_like_hf_model(name: str) -> bool:
    return "/" in name or Path(name).expanduser().exists()


def all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k in cfg.keys():
        path = f"{prefix}{k}"
        keys.append(path)
        node = cfg._get_node(k)
        if isinstance(node, DictConfig):
            keys.extend(all_keys(node, path + "."))
    return keys


def compose(method: str = "grpo", task: str = "debug", feedback: str | None = None,
            model: str | None = None, preset: str | None = None, engine: str | None = None,
            overrides: Iterable[str] = ()) -> DictConfig:
    """Compose one run's config. Raises :class:`UserError` on an unknown name or key."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, HydraException
    from omegaconf.errors import OmegaConfBaseException

    group_overrides = []
    _check_name("method", method)
    group_overrides.append(f"method={method}")
    _check_name("task", task)
    group_overrides.append(f"task={task}")
    if feedback is not None:
        _check_name("feedback", feedback)
        group_overrides.append(f"feedback={feedback_option(feedback)}")
    if model is not None:
        if model in group_options("model"):
            group_overrides.append(f"model={model}")
        elif _looks_like_hf_model(model):
            if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
                raise UserError(f"model folder '{model}' does not exist. Give a folder saved with save_pretrained "
                                f"(config.json, weights, tokenizer), a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct' "
                                f"(needs hub access), or an offline model: {', '.join(group_options('model'))}")
            group_overrides += ["model=hf", f"model.path={model}"]
        else:
            _check_name("model", model)
    if preset is not None:
        _check_name("preset", preset)
        group_overrides.append(f"preset={preset}")
    if engine is not None:
        _check_name("engine", engine)
        group_overrides.append(f"engine={engine}")
    user = list(overrides)
    for ov in user:
        if "=" not in ov:
            raise UserError(f"override '{ov}' is not of the form key=value (e.g. train.lr=1e-5)")

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            base = hydra_compose(config_name="config", overrides=group_overrides)
        except (ConfigCompositionException, HydraException, OmegaConfBaseException) as err:
            raise UserError(f"could not compose the config: {err}") from None
        try:
            cfg = hydra_compose(config_name="config", overrides=group_overrides + user)
        except (ConfigCompositionException, HydraException, OmegaConfBaseException) as err:
            raise _explain_override_error(err, base, user) from None
    OmegaConf.set_struct(cfg, True)
    if model is None and cfg.task.get("default_model") and cfg.model.name != cfg.task.default_model:
        # a task may name its own default model (cold_start: a base model, not the instruct default)
        return compose(method, task, feedback, cfg.task.default_model, preset, engine, overrides)
    if cfg.setting not in ("instruct", "cold_start"):
        raise UserError(f"setting must be 'instruct' or 'cold_start', got {cfg.setting!r}")
    from vpd_bench.validation import check_config
    check_config(cfg, base, user)          # types and ranges, before anything is created
    return raw_prompt_stop(whole_eval_file(cfg, user), user)


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys a list of ``key=value`` overrides sets (``+``/``~`` prefixes dropped)."""
    return {ov.split("=", 1)[0].lstrip("+~") for ov in overrides}


def raw_prompt_stop(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Raw completion prompts (``task=cold_start``, ``setting=cold_start``) stop at the next
    "Question:" / "Answer:" (``tasks.answers.RAW_PROMPT_STOP``) unless ``rollout.stop`` is set
    (on the command line, ``rollout.stop=[]`` included, or by a preset): a base model has no end
    of turn, and without a stop it repeats the question until the token limit."""
    from vpd_bench.tasks.answers import RAW_PROMPT_STOP, use_raw_prompts
    if use_raw_prompts(cfg) and "rollout.stop" not in override_keys(overrides) and not cfg.rollout.stop:
        cfg.rollout.stop = list(RAW_PROMPT_STOP)
    return cfg


def whole_eval_file(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """A user's own held-out file (``task.eval_file``) is evaluated whole: ``eval.num_problems``
    becomes 0 (all rows) unless ``overrides`` set it, so a preset's cap never silently drops rows."""
    if cfg.task.get("eval_file") and "eval.num_problems" not in override_keys(overrides):
        cfg.eval.num_problems = 0
    return cfg


def _explain_override_error(err: Exception, base: DictConfig, user: list[str]) -> UserError:
    keys = all_keys(base)
    for ov in user:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            if not close:  # compare on the last component, e.g. `lrr` -> `train.lr`
                leaf = key.rsplit(".", 1)[-1]
                by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
                m = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
                close = [by_leaf[m[0]]] if m else []
            hint = f" Did you mean '{close[0]}'?" if close else ""
            return UserError(f"unknown config key '{key}' (from override '{ov}').{hint} "
                             f"`vpd-bench validate ...` prints the full resolved config.")
    msg = re.sub(r"\s+", " ", str(err)).strip()
    return UserError(f"bad override: {msg}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def feedback_label(cfg) -> str:
    """The feedback a run actually uses: RLVR reads none, SDFT / OPSD read the reference."""
    if "teacher" not in cfg.method:
        return "none"
    if cfg.method.get("context") == "reference":
        return "reference"
    return cfg.feedback.name
