"""Launching: sweeps over methods x tasks x feedback x seeds (``sweep``), Ray (``ray``), per-method
tuning (``tune``) and the stand-alone ``vpd-bench eval`` (``evaluate``)."""
