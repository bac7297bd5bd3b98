"""Methods, one file each, installed as ``vpd_bench.methods``. Importing registers them."""
from . import grpo, grpo_sdpo, opsd, sdft, sdpo, vpd  # noqa: F401
