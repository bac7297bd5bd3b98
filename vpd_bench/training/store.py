"""The run store: one folder per run, every write atomic (write, fsync, rename).

  config.yaml     the resolved config
  metrics.jsonl   one JSON object per step
  eval.jsonl      one JSON object per held-out evaluation
  eval_samples.jsonl  one JSON object per held-out problem and sample at every evaluation
                  (step, problem_id, sample, response, reward, status, answer, feedback)
  teacher_probe.jsonl  with eval.teacher_probe > 0: one row per evaluation (vpd_bench.training.teacher_probe)
  samples.jsonl   prompts, responses, rewards, feedback, teacher prompts (capped per step)
  results.json    the typed summary (vpd_bench.evaluation.results)
  checkpoints/    step_XXXXXX/ {state.pt, meta.json} and LATEST
  train.log       one line per step
A killed run loses at most the steps since its last checkpoint; on resume the JSONL files are
cut back to that checkpoint, so they never hold steps the model state does not.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from vpd_bench.errors import UserError
from vpd_bench.evaluation import results as R
from vpd_bench.evaluation.results import atomic_write_text, storage_error

log = logging.getLogger("vpd_bench")


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if torch.is_tensor(obj):
        return _clean(obj.tolist())
    return obj


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_weights(model, tokenizer, folder: Path) -> None:
    """The weights as ``from_pretrained`` reads them: a model folder, or under LoRA a PEFT adapter
    folder ``adapter/`` (the base model is the one the run started from)."""
    if _is_peft(model):
        model.save_pretrained(folder / "adapter", safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load_weights(model, folder: Path) -> None:
    """Load weights written by :func:`save_weights` into ``model`` (same architecture)."""
    from safetensors.torch import load_file
    if _is_peft(model):
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
        return
    weights: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if not weights:
        raise UserError(f"checkpoint {folder} holds no weights (*.safetensors)")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in weights if k in params}
    # tied weights (lm_head = embeddings) are saved once; anything else missing is an error
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if untied or unexpected:
        raise UserError(f"checkpoint {folder} does not match the model: missing {untied[:5]}, "
                        f"unexpected {list(unexpected)[:5]}")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not valid JSON: skipped", path, n)
    return rows


class JsonlLog:
    """A JSONL file kept in memory and rewritten atomically on every flush."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = read_jsonl(path)

    def append(self, row: dict) -> None:
        self.rows.append(_clean(row))

    def truncate_after(self, step: int) -> None:
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]

    def flush(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, default=str) + "\n" for r in self.rows))


class RunStore:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir = self.dir / R.CHECKPOINT_DIR
        self.metrics = JsonlLog(self.dir / R.METRICS_FILE)
        self.evals = JsonlLog(self.dir / R.EVAL_FILE)
        self.samples = JsonlLog(self.dir / R.TRAIN_SAMPLES_FILE)
        self.eval_samples = JsonlLog(self.dir / R.SAMPLES_FILE)
        self.teacher_probe = JsonlLog(self.dir / R.TEACHER_PROBE_FILE)

    @property
    def results_path(self) -> Path:
        return self.dir / R.RESULTS_FILE

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.dir / R.CONFIG_FILE, yaml_text)

    def flush(self) -> None:
        self.metrics.flush()
        self.evals.flush()
        self.samples.flush()
        self.eval_samples.flush()
        if self.teacher_probe.rows or self.teacher_probe.path.exists():
            self.teacher_probe.flush()

    # -- checkpoints ------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_dir / "LATEST"
        if not pointer.exists():
            return None
        path = self.ckpt_dir / pointer.read_text().strip()
        if not (path / "meta.json").exists():
            raise UserError(f"checkpoint pointer {pointer} names {path}, which is incomplete; "
                            f"delete {pointer} to resume from an earlier checkpoint or start afresh")
        return path

    def remove_leftovers(self) -> None:
        """Temporaries of an interrupted write (a crash, a full disk): never valid, removed on start."""
        for stale in list(self.ckpt_dir.glob(".step_*.tmp-*")) + list(self.dir.glob(".*.tmp-*")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    def save_checkpoint(self, step: int, state: dict, keep: int = 1, model=None, tokenizer=None) -> Path:
        """``checkpoints/step_N/``: with ``model``, a Hugging Face model folder (config.json, safetensors
        weights, tokenizer; a LoRA run's adapter as a PEFT folder in ``adapter/``) that
        ``from_pretrained`` loads, and the trainer's own state (optimizer, scheduler, teacher,
        method, RNG, logs) beside it in ``state.pt``; ``meta.json`` holds the sha256 of every file."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:06d}"
        final = self.ckpt_dir / name
        tmp = self.ckpt_dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            if model is not None:
                save_weights(model, tokenizer, tmp)
            torch.save(state, tmp / "state.pt")
            files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
            meta = {"step": step, "sha256": {f: _sha256(tmp / f) for f in files}}
            atomic_write_text(tmp / "meta.json", json.dumps(meta) + "\n")
        except UserError:                           # meta.json could not be written
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(err, tmp / "state.pt") from None
        except RuntimeError as err:                  # torch.save reports a failed write as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            import errno
            code = errno.ENOSPC if "space" in str(err).lower() else errno.EIO
            raise storage_error(OSError(code, str(err).splitlines()[0]), final / "state.pt") from None
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(self.ckpt_dir / "LATEST", name + "\n")
        # prune: keep the newest `keep` complete checkpoints
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / "meta.json").exists())
        for old in done[:-max(1, keep)]:        # keep=0 still keeps the newest until the run completes
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.ckpt_dir.glob(".step_*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)

    def verify_checkpoint(self, path: Path) -> None:
        """Compare every file of a checkpoint with the checksum written when it was saved."""
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"checkpoint {path} has an unreadable meta.json ({err}); {self._fallback(path)}") from None
        for name, digest in (meta.get("sha256") or {}).items():
            if _sha256(path / name) != digest:
                raise UserError(f"checkpoint file {path / name} is damaged (its sha256 differs from the one recorded "
                                f"when it was saved); {self._fallback(path)}")

    def _fallback(self, path: Path) -> str:
        earlier = sorted(p.name for p in self.ckpt_dir.glob("step_*") if (p / "meta.json").exists() and p != path
                         and p.name < path.name)
        if earlier:
            return (f"resume from the earlier checkpoint {earlier[-1]} by writing '{earlier[-1]}' into "
                    f"{self.ckpt_dir / 'LATEST'}, or rerun without --resume into another --out")
        return "no earlier checkpoint exists: rerun without --resume into another --out (or delete the run folder)"

    def load_checkpoint(self, path: Path) -> dict:
        self.verify_checkpoint(path)
        try:
            return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise UserError(f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                            f"delete it and point {self.ckpt_dir / 'LATEST'} at an earlier one, "
                            f"or rerun without --resume") from None
