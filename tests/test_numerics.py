"""What decides a run's floating-point results besides code and seed is recorded with every result."""
import os
import subprocess
import sys

import torch

from vpd_bench.evaluation.results import numerics, versions


def test_versions_record_the_kernel_path_and_threads(monkeypatch):
    for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        monkeypatch.delenv(k, raising=False)
    got = versions()["numerics"]
    assert got["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert got["threads"] == torch.get_num_threads()
    assert "kernel_env" not in got                      # nothing set: nothing claimed
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert numerics()["kernel_env"] == {"MKL_CBWR": "COMPATIBLE"}


def test_a_pinned_kernel_path_is_what_is_recorded():
    """ATEN_CPU_CAPABILITY=default forces torch's scalar kernels: the record must say so, not the
    machine's best path."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", "from vpd_bench.evaluation.results import numerics; "
                          "n = numerics(); print(n['cpu_capability'], n['kernel_env']['ATEN_CPU_CAPABILITY'])"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["DEFAULT", "default"]
