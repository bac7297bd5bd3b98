"""Training: the loop (``Trainer``), multi-process hooks, teacher strategies, teacher prompts,
feedback sources, the run store (logs, checkpoints), the validation split and the teacher probe."""
