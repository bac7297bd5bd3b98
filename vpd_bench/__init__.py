"""vpd-bench: learning from language feedback, measured.

The backbone (rollout, scoring, feedback, losses, loop, store, sandbox, report) lives here;
methods and task families install as ``vpd_bench.methods`` and ``vpd_bench.tasks``.
"""
__version__ = "0.1.0"
