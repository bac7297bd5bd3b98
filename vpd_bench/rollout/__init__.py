"""Rollouts: the batch a step works on, the engines that sample responses (HF ``generate``,
vLLM) and log-prob scoring of packed prompt + response rows. Imports nothing from training,
launching or reporting."""
