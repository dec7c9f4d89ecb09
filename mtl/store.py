"""The adapter store: stage-1 adapters keyed by backbone, task and adapter config, trained once.

A key is readable (``<backbone>/<task>/<hash>``) and its hash covers everything that changes the
adapter: the backbone's name and shape, the task spec with its data split settings, the adapter
config and the stage-1 training settings. Entries are written atomically, so an interrupted run
never leaves a half-written adapter that a later run would reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any


def default_store_dir() -> Path:
    """$PLMKIT_ADAPTER_STORE, else ``<plmkit cache>/adapter-store``."""
    env = os.environ.get("PLMKIT_ADAPTER_STORE")
    if env:
        return Path(env).expanduser()
    from plmkit.assets import cache_dir

    return cache_dir() / "adapter-store"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text).strip("_") or "x"


def store_key(backbone: dict[str, Any], task: str, settings: dict[str, Any]) -> str:
    """``<backbone>/<task>/<12-hex hash of everything that shapes the adapter>``."""
    payload = json.dumps({"backbone": backbone, "task": task, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{_slug(backbone.get('name') or backbone['model_type'])}/{_slug(task)}/{digest}"


class AdapterStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_store_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        complete = (path / "config.json").is_file() and (path / "weights.safetensors").is_file()
        return path if complete else None

    def put(self, key: str, folder: str | Path) -> Path:
        """Move a finished adapter folder into the store (same-filesystem rename when possible)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.incoming")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return target
