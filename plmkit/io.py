"""Atomic writes: a crash mid-write never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:  # torch stays unimported for light users (the asset cache)
    import torch

try:  # POSIX only; elsewhere the atomic renames alone keep concurrent writers safe.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path,
                        metadata: dict[str, str] | None = None) -> None:
    """Save a safetensors file (with optional string ``metadata``) through a temporary name and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces ``path`` only if the block succeeds.

    An existing folder moves into a uniquely named sibling first (a directory cannot be renamed over a
    non-empty one), so concurrent writers never collide on it; readers use ``read_whole``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "entry")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed); ``on_wait()`` is called before blocking.

    The lock file lives beside what it protects, so processes on other machines sharing the folder
    lock each other too (where the file system supports ``flock``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _being_written(path: Path) -> bool:
    """True while ``atomic_directory`` is writing or swapping ``path``: a sibling ``.<name>.*.tmp|.old`` exists.

    Looked at after the folder was found absent; if the swap completed meanwhile, the folder is back.
    """
    prefix = f".{path.name}."
    try:
        busy = any(p.name.startswith(prefix) and p.name.endswith((".tmp", ".old")) for p in path.parent.iterdir())
    except OSError:  # no parent folder: nothing is being written there
        busy = False
    return busy or path.exists()


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder now at ``path``, or None while nothing is there."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def read_whole(path: str | Path, load: Callable[[Path], T], attempts: int = 7) -> T:
    """``load(path)`` on one whole version of a folder that another process may replace meanwhile.

    Folders written with ``atomic_directory`` (store entries too) are replaced by two renames: the
    old folder moves away, then the new one moves in. A reader between or across those renames finds
    files missing, or reads the config of one version and the weights of the next. So the folder's
    identity (device, inode) is taken before and after ``load``: if it changed, or nothing was there,
    the read is repeated after a short wait (2, 4, 8 ... ms, ``attempts`` reads in all). An error
    raised while the same folder stayed in place is a real one and propagates at once; so does the
    last attempt's error. A folder that is absent while no write of it is under way (no staging or
    moved-away sibling of ``atomic_directory``) is simply absent: no waiting, the loader's answer stands.
    """
    path = Path(path)
    for attempt in range(attempts):
        before = _identity(path)
        settled = before is None and not _being_written(path)  # absent, and nobody is putting it there
        try:
            result = load(path)
        except Exception:
            if attempt + 1 == attempts or settled or (before is not None and _identity(path) == before):
                raise
        else:
            if settled or (before is not None and _identity(path) == before):
                return result
            if attempt + 1 == attempts:
                raise RuntimeError(f"{path} was replaced during each of {attempts} reads; "
                                   "stop the process that keeps rewriting it, then read again")
        time.sleep(0.002 * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
