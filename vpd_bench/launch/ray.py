"""Sweeps on Ray (extra ``[ray]``): each run of a sweep is one Ray task with its own resource request.

    vpd-bench run --methods grpo,sdpo,vpd --task math --seeds 3 --launcher ray                 # local Ray
    vpd-bench run --methods grpo,sdpo,vpd --task math --seeds 3 --launcher ray --address auto  # a cluster

- **One task per run**, requesting ``num_cpus`` / ``num_gpus`` (fractions allowed, e.g. 0.5 to put
  two small runs on one GPU). Taken from, in order: the ``num_cpus`` / ``num_gpus`` arguments of
  :func:`run_ray`, the run's config (``resources.num_cpus`` / ``resources.num_gpus`` if the config
  has them), the environment (``VPD_BENCH_RAY_NUM_CPUS`` / ``VPD_BENCH_RAY_NUM_GPUS``), else
  1 CPU and, on a cluster that has GPUs, 1 GPU.
- The task runs ``python -m vpd_bench run ... --resume`` for its run in a subprocess (Ray sets
  ``CUDA_VISIBLE_DEVICES`` to the GPUs it granted; ``OMP_NUM_THREADS`` is set to the CPUs granted).
- **A failed run is retried once** (Ray ``max_retries=1``, ``retry_exceptions=True``); the retry
  resumes from the run's last checkpoint. Every attempt is recorded in the run folder's
  ``ray_attempts.log`` (time, node, pid, resources granted); a run's output is in ``stdout.log``.
- **One run store.** Runs write to their usual folders ``<out>/<task>/<method>/<feedback>/seed<s>``.
  If the worker sees ``--out`` (same machine or a shared filesystem: checked with a marker file
  the driver writes there) it writes in place; otherwise it runs in a local scratch folder and
  its results (results.json, metrics, evals, samples, config, logs; not checkpoints) are copied
  back into the store by the driver. Completed runs are skipped; partial ones resume.
- **No address**: a local Ray instance with a small footprint is started (no dashboard, 100 MB
  object store, one CPU slot per core) and shut down at the end. With ``--address`` (``auto``,
  ``host:6379`` or ``ray://host:10001``) the driver joins that cluster; every node needs
  vpd-bench installed (same version) and, for checkpoints to survive a node loss, ``--out`` on a
  shared filesystem.

Ray is imported lazily; without it ``--launcher ray`` fails with the install command.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from vpd_bench.errors import UserError

log = logging.getLogger("vpd_bench")

INSTALL_HINT = "pip install 'vpd-bench[ray]'"
COPY_BACK = ("results.json", "metrics.jsonl", "eval.jsonl", "samples.jsonl", "config.yaml", "train.log",
             "stdout.log", "ray_attempts.log")
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--launcher ray needs Ray, which is not installed: {INSTALL_HINT}  "
                        f"(or run the sweep locally with --jobs N)") from None
    return ray


# -- resources ----------------------------------------------------------------------------------------------
def _number(value):
    if value is None or value == "":
        return None
    f = float(value)
    return int(f) if f.is_integer() else f


def resources_for(spec, num_cpus=None, num_gpus=None, cluster_gpus: float = 0.0) -> tuple[float, float]:
    """(num_cpus, num_gpus) for one run: arguments > the run's config > environment > defaults."""
    from omegaconf import OmegaConf
    cfg = spec.compose()
    conf_cpus = OmegaConf.select(cfg, "resources.num_cpus", default=None)
    conf_gpus = OmegaConf.select(cfg, "resources.num_gpus", default=None)
    cpus = next((_number(v) for v in (num_cpus, conf_cpus, os.environ.get("VPD_BENCH_RAY_NUM_CPUS"))
                 if _number(v) is not None), 1)
    gpus = next((_number(v) for v in (num_gpus, conf_gpus, os.environ.get("VPD_BENCH_RAY_NUM_GPUS"))
                 if _number(v) is not None), 1 if cluster_gpus > 0 else 0)
    return cpus, gpus


# -- the task (runs on a Ray worker) ---------------------------------------------------------------------------
def _scratch_root() -> Path:
    return Path(os.environ.get("VPD_BENCH_RAY_SCRATCH", os.path.join(tempfile.gettempdir(), "vpd-bench-ray")))


def execute_run(fields: dict, marker: str, threads: int) -> dict:
    """Run one spec in a subprocess; raise on failure (so that Ray retries it)."""
    from vpd_bench.launch.sweep import RunSpec, run_status
    names = {f.name for f in dataclasses.fields(RunSpec)}
    spec = RunSpec(**{k: v for k, v in fields.items() if k in names})
    shared = Path(marker).exists()
    if not shared:                  # the driver's --out is not visible here: run in scratch, copy back
        key = hashlib.sha256(str(spec.run_dir()).encode()).hexdigest()[:16]
        spec = dataclasses.replace(spec, out=str(_scratch_root() / key))
    run_dir = spec.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    granted = {}
    try:
        import ray
        granted = {k: v for k, v in ray.get_runtime_context().get_assigned_resources().items()}
    except Exception:  # noqa: BLE001 - outside Ray (tests call this directly)
        pass
    attempt = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "node": socket.gethostname(), "pid": os.getpid(),
               "resources": granted, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "shared_store": shared}
    with open(run_dir / "ray_attempts.log", "a") as fh:
        fh.write(json.dumps(attempt) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(threads)))}
    with open(run_dir / "stdout.log", "a") as out:
        rc = subprocess.call([sys.executable, "-m", "vpd_bench", *spec.cli_args()], stdout=out,
                             stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = "\n".join((run_dir / "stdout.log").read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"run {run_dir} exited with code {rc}; last lines of its stdout.log:\n{tail}")
    files = None
    if not shared:
        files = {name: (run_dir / name).read_bytes() for name in COPY_BACK if (run_dir / name).is_file()}
    return {"run_dir": str(run_dir), "node": attempt["node"], "shared": shared, "status": run_status(run_dir),
            "files": files}


# -- the driver ----------------------------------------------------------------------------------------------
def _connect(ray, address: str | None) -> bool:
    """Join ``address`` or start a small local instance; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        ray.init(num_cpus=int(os.environ.get("VPD_BENCH_RAY_LOCAL_CPUS", cpus)), include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
    return True


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return "\n".join(text[-16:])


def run_ray(specs, address: str | None = None, resume: bool = True, num_cpus=None, num_gpus=None,
            max_retries: int = 1) -> int:
    """Run every spec as a Ray task; gather results into the run store. Returns the number of
    runs that failed (after their retry)."""
    from vpd_bench.launch.sweep import run_status
    ray = import_ray()
    todo = []
    for spec in specs:
        spec = dataclasses.replace(spec, out=str(Path(spec.out).expanduser().resolve()))
        run_dir = spec.run_dir()
        status = run_status(run_dir)
        if status == "complete":
            log.info("skip %s: already complete", run_dir)
            continue
        if status == "partial" and not resume:
            raise UserError(f"{run_dir} holds a partial run: pass --resume to continue it")
        todo.append(spec)
    if not todo:
        return 0
    started = _connect(ray, address)
    markers: dict[str, Path] = {}
    try:
        for out in sorted({s.out for s in todo}):
            Path(out).mkdir(parents=True, exist_ok=True)
            markers[out] = Path(out) / f".vpd-bench-ray-{uuid.uuid4().hex[:12]}"
            markers[out].write_text("written by the vpd-bench Ray driver to detect a shared filesystem\n")
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(execute_run)
        refs = {}
        for spec in todo:
            cpus, gpus = resources_for(spec, num_cpus, num_gpus, cluster_gpus)
            ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=True,
                               name=f"vpd-bench {spec.method}/{spec.task}/seed{spec.seed}").remote(
                dataclasses.asdict(spec), str(markers[spec.out]), max(1, int(cpus)))
            refs[ref] = spec
            log.info("submitted %s (cpus=%s, gpus=%s)", spec.run_dir(), cpus, gpus)
        failures, waiting = 0, list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            spec = refs[done[0]]
            try:
                res = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - a run failed twice; the sweep goes on
                failures += 1
                log.error("run %s failed after %d attempt(s): %s", spec.run_dir(), max_retries + 1, _short(err))
                continue
            if res.get("files"):
                target = spec.run_dir()
                target.mkdir(parents=True, exist_ok=True)
                for name, data in res["files"].items():
                    (target / name).write_bytes(data)
            log.info("finished %s on %s (%s)", spec.run_dir(), res["node"], res["status"])
        log.info("ray sweep: %d run(s), %d failed", len(todo), failures)
        return failures
    finally:
        for m in markers.values():
            m.unlink(missing_ok=True)
        if started:
            ray.shutdown()
