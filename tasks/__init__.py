"""Task families, one file each. Installed as ``vpd_bench.tasks``."""
from .base import TASKS, Problem, Task, Verdict, register_task  # noqa: F401

# Import each family so it registers itself. A family whose optional data package is missing
# still registers; it raises a clear error only when its data are loaded.
from . import debug  # noqa: F401,E402

for _mod in ("code", "math", "sciqa", "cold_start"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _err:  # pragma: no cover - only while a family is being written
        if _err.name != f"{__name__}.{_mod}":
            raise


def build_task(cfg) -> Task:
    from vpd_bench.registry import lookup
    cls = lookup(TASKS, cfg.task.name, "task")
    return cls(cfg)
