"""Shared helpers for the benchmark scripts (not a test module; nothing here is imported by tests).

Conventions every script follows:
- ratios are measured side by side in one run, repeats interleaved (A, B, A, B, ...), and the
  median of each side is reported: the machines are shared and noisy;
- the last line printed is ``<name>: <ratio> (target <target>)``, and the script exits 0 whether
  or not the target is met (a benchmark is a measurement, not a test);
- ``--quick`` shrinks every setting so that the whole suite stays under 10 minutes on 2 CPU cores;
- ``--threads`` sets torch's intra-op threads (default 1, see README: with two OpenMP threads on a
  shared 2-core machine a descheduled thread stalls every parallel region and step times swing
  by up to 10x between repeats; one thread per process keeps the ratios reproducible).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INSTALL_HINT = ("the benchmarks need the `bench` extra: "
                "pip install 'trl==1.16.0' psutil   (or: pip install -e '.[bench]')")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small settings: the whole suite in under 10 minutes")
    p.add_argument("--threads", type=int, default=int(os.environ.get("VPD_BENCH_THREADS", 1)),
                   help="torch intra-op threads (0 = torch's default, all cores); default 1")
    p.add_argument("--model", default="smollm2-135m", help="model config name (default: the offline default)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: per script)")
    return p


def setup_threads(threads: int) -> None:
    import torch
    if threads and threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def require(*modules: str) -> None:
    """Exit with an install hint (status 0: a benchmark never fails the suite) if a module is missing."""
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        print(f"missing module(s) {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2)


def quiet() -> None:
    """Silence the progress bars and deprecation chatter of transformers / TRL."""
    import logging
    import warnings
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("vpd_bench").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB: VmHWM from /proc/self/status, which
    starts afresh at exec. (``getrusage``'s ru_maxrss is the fallback off Linux; on Linux it is
    carried across fork + exec, so a child would report its parent's peak when that is larger.)"""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def fixed_length(trainer) -> None:
    """Make a Trainer's engine ignore EOS: every response is exactly max_new_tokens long, so that
    two runs being compared do the same amount of work whatever they sample."""
    engine = trainer.engine
    orig = engine.generate

    def generate(*args, **kwargs):
        kwargs.setdefault("ignore_eos", True)
        return orig(*args, **kwargs)
    engine.generate = generate


def trainer(method: str, overrides: list[str], model: str = "smollm2-135m", loaded=None, fixed: bool = True):
    """A Trainer on the debug task with a throw-away run directory."""
    import tempfile

    from vpd_bench.config import compose
    from vpd_bench.training.loop import Trainer
    cfg = compose(method, "debug", model=model, overrides=overrides)
    t = Trainer(cfg, tempfile.mkdtemp(prefix=f"bench-{method}-"), loaded=loaded, progress=False)
    if fixed:
        fixed_length(t)
    return t


def result_line(name: str, ratio: float, target: str) -> str:
    return f"{name}: {ratio:.3f} (target {target})"


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def machine() -> dict:
    import platform

    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], **cpu_features()}


def cpu_features() -> dict:
    """The CPU model and the vector extensions that decide float32 vs bfloat16 speed: without
    ``avx512_bf16`` / ``amx_bf16`` a bf16 matmul is emulated and slower than float32."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    return {"cpu_model": model, "cpu_flags": [f for f in wanted if f in flags]}
