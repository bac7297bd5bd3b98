"""Models: loading (Hugging Face id or folder, packaged GGUF, tiny in-process) and building a
random-init model from a config. Imports nothing from training, launching or reporting."""
from vpd_bench.models.common import LoadedModel, build_tiny_tokenizer  # noqa: F401
from vpd_bench.models.loading import load_model  # noqa: F401
