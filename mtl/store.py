"""The source store: stage-1 modules keyed by backbone, kind, task and content, trained once.

A key is readable (``<backbone>/<kind>/<task>/<hash>``) and its hash covers everything that changes
the module: the backbone's name, shape and a fingerprint of its weights, the kind and its config,
the task spec with a fingerprint of the rows actually used (after splitting and subsampling) and
the stage-1 training settings (see ``mtl.fingerprint``). Rewriting a data file or a local
backbone's weights therefore changes the key, and the module is retrained rather than reused.

Concurrency: ``locked(key)`` holds a per-key file lock (the asset cache's lock helper), so a second
run that needs the same source waits, then finds and reuses the entry. ``put`` copies into a unique
staging folder and renames it into place, so a reader sees a whole entry or none; ``read(key, load)``
(and ``plmkit.io.read_whole`` for a folder) re-reads when an entry is replaced under the reader. Under several ranks
(one job launched with ``deepspeed``) ``get_or_put`` is collective: rank 0 alone holds the lock and
looks the key up, and every rank follows its answer (train together, or reuse), so the ranks can
never split between training and reusing when another job installs the entry meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from plmkit import distributed
from plmkit.io import atomic_directory, file_lock, read_whole
from plmkit.saving import CONFIG, WEIGHTS

T = TypeVar("T")


class _NoEntry(Exception):
    """Raised inside ``AdapterStore.read`` while the key has no whole entry."""


def default_store_dir() -> Path:
    """$PLMKIT_ADAPTER_STORE, else ``<plmkit cache>/adapter-store``."""
    env = os.environ.get("PLMKIT_ADAPTER_STORE")
    if env:
        return Path(env).expanduser()
    from plmkit.assets import cache_dir

    return cache_dir() / "adapter-store"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text).strip("_") or "x"


def store_key(backbone: dict[str, Any], task: str, settings: dict[str, Any], kind: str = "adapter") -> str:
    """``<backbone>/<kind>/<task>/<12-hex hash of everything that shapes the module>``."""
    payload = json.dumps({"backbone": backbone, "task": task, "kind": kind, **settings}, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return f"{_slug(backbone.get('name') or backbone['model_type'])}/{_slug(kind)}/{_slug(task)}/{digest}"


@dataclass(frozen=True)
class StoreEntry:
    """One complete entry of the store."""

    key: str
    backbone: str
    kind: str
    task: str
    path: Path


class AdapterStore:
    """Stage-1 modules of every kind under one root folder."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_store_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        complete = (path / CONFIG).is_file() and (path / WEIGHTS).is_file()
        return path if complete else None

    def read(self, key: str, load: Callable[[Path], T]) -> T | None:
        """``load(entry folder)`` on one whole version of the entry, or None when the key has none.

        Prefer this to opening files under ``get(key)``: ``put`` may replace the entry meanwhile (the
        old folder moves away before the new one moves in), and this re-reads when that happened
        (``plmkit.io.read_whole``) instead of failing on a file that was there a moment ago.
        """
        def whole(path: Path) -> T:
            if self.get(key) is None:
                raise _NoEntry(key)
            return load(path)

        try:
            return read_whole(self.path(key), whole)
        except _NoEntry:
            return None

    def list(self, backbone: str | None = None, kind: str | None = None) -> list[StoreEntry]:
        """Complete entries, optionally of one backbone (name or slug) and one kind."""
        entries = []
        for config in sorted(self.root.glob(f"*/*/*/*/{CONFIG}")):
            folder = config.parent
            if folder.name.startswith(".") or not (folder / WEIGHTS).is_file():
                continue  # staging folders and incomplete entries are not entries
            key = folder.relative_to(self.root).as_posix()
            name, entry_kind, task, _ = key.split("/")
            if (backbone is None or name == _slug(backbone)) and (kind is None or entry_kind == kind):
                entries.append(StoreEntry(key, name, entry_kind, task, folder))
        return entries

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the per-key lock: one process at a time trains (or writes) the entry for ``key``."""
        with file_lock(self.root / ".locks" / (key.replace("/", "--") + ".lock")):
            yield

    def put(self, key: str, folder: str | Path) -> Path:
        """Copy a finished module folder into the store under the key's lock."""
        with self.locked(key):
            return self._install(key, folder)

    def _install(self, key: str, folder: str | Path) -> Path:
        """Stage under a unique name, then rename: readers see the old entry, the new one or none."""
        with atomic_directory(self.path(key)) as staging:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
        return self.path(key)

    def get_or_put(self, key: str, build: Callable[[], str | Path]) -> tuple[Path, bool]:
        """(entry, reused): the stored entry, or ``build()``'s folder stored under the lock.

        With more than one rank every rank must call this together: rank 0 holds the lock and decides,
        every rank runs ``build()`` when the entry is missing (they train together), rank 0 installs it
        and all wait for that before they return. (The other ranks cannot take the lock too: on one
        machine they would wait on rank 0, which needs them to train.) If ``build()`` or the install
        fails on any rank after the ranks' last collective, every rank raises (the failing rank its
        own error, the others one that names it) instead of the others waiting for it forever; a rank
        that fails inside a collective of training still leaves the others to the backend's timeout.
        """
        if distributed.world_size() == 1:
            with self.locked(key):
                found = self.get(key)
                if found is not None:
                    return found, True
                return self._install(key, build()), False
        main = distributed.is_main_process()
        with self.locked(key) if main else contextlib.nullcontext():
            reused = distributed.broadcast_object(self.get(key) is not None if main else None)
            if not reused:
                folder, failure = _attempt(build)
                _fail_together(key, "building", failure)  # install nothing unless every rank built it
                if main:
                    _, failure = _attempt(lambda: self._install(key, folder))
                _fail_together(key, "installing", failure)  # also the wait for rank 0's install
        return self.path(key), reused


def _attempt(step: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """(result, None), or (None, the error) when ``step`` raised."""
    try:
        return step(), None
    except Exception as exc:  # handed to _fail_together, which raises it on this rank
        return None, exc


def _fail_together(key: str, what: str, failure: Exception | None) -> None:
    """Collective: raise on every rank if ``failure`` happened on any (the failing rank raises its own)."""
    outcomes = distributed.gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = {rank: outcome for rank, outcome in enumerate(outcomes) if outcome is not None}
    if failed:
        raise RuntimeError(
            f"{what} the store entry {key!r} failed on rank(s) {sorted(failed)}: {failed}. This rank stops "
            "too rather than wait for them; fix that error and rerun (an entry that was not installed is "
            "built again).")
