"""Content fingerprints for store keys: the backbone weights (the data's is the core's ``Task.fingerprint``).

A store key built from paths and settings alone would reuse a stale module after a data file or a
local backbone's weights were rewritten in place. These fingerprints hash what was actually used:

- data: ``Task.fingerprint()``, the rows of every split *after* splitting and subsampling, so a
  changed file, seed or sample limit changes the key;
- backbone: the weight files of the folder the model was loaded from (sha256 of each file, cached
  by path + size + mtime, in memory and in an optional JSON cache file, so a large checkpoint is
  read once); a model with no folder on disk (a tiny in-memory model, a hub id) hashes its state dict.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import torch
from torch import nn

from plmkit.io import atomic_write_json, sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_memory_cache: dict[str, str] = {}
_cache_lock = threading.Lock()


def file_fingerprint(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of one file, cached by (resolved path, size, mtime)."""
    stat = path.stat()
    cache_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    with _cache_lock:
        if cache_key in _memory_cache:
            return _memory_cache[cache_key]
    on_disk = _read_cache(cache_file)
    value = on_disk.get(cache_key) or sha256_file(path)
    with _cache_lock:
        _memory_cache[cache_key] = value
    if cache_file is not None and cache_key not in on_disk:
        on_disk[cache_key] = value
        atomic_write_json(cache_file, on_disk)
    return value


def _read_cache(cache_file: Path | None) -> dict[str, str]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a re-hash
    return data if isinstance(data, dict) else {}


def state_dict_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # raw bytes
    return digest.hexdigest()


def backbone_fingerprint(model: nn.Module, cache_file: Path | None = None) -> str:
    """Hash of the weight files the model was loaded from, else of its state dict."""
    folder = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""))
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES) \
        if str(folder) not in ("", ".") and folder.is_dir() else []
    if not files:
        return "state:" + state_dict_fingerprint(model)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_fingerprint(path, cache_file)}\n".encode())
    return "files:" + digest.hexdigest()
