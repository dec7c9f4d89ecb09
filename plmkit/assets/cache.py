"""The cache folder: where assets live, local overrides, the per-asset lock and the asset record.

``<cache>/assets/<name>/`` holds a ready asset, with ``asset.json`` (provenance and per-file sha256)
written last; ``<cache>/downloads/`` keeps the verified archives, so a rebuild works offline;
``<cache>/verified/<name>.json`` remembers size and mtime of files after a full check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from plmkit.assets.registry import Asset, AssetError
from plmkit.io import file_lock, sha256_file

MARKER = "asset.json"


def cache_dir() -> Path:
    """$PLMKIT_CACHE, else the platform's per-user cache folder."""
    env = os.environ.get("PLMKIT_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("plmkit"))


def asset_dir(name: str) -> Path:
    """Where the ready folder of `name` lives in the cache (it may not exist yet)."""
    return cache_dir() / "assets" / name


def is_cached(name: str) -> bool:
    """True when the cached folder is complete: the marker is written only once all else is in place."""
    return (asset_dir(name) / MARKER).is_file()


def repair_command(name: str) -> str:
    """The command that rebuilds a damaged asset (from the kept archive when there is one)."""
    return f"plmkit assets fetch {name} --force"


def read_record(name: str) -> dict:
    """The parsed ``asset.json`` of a cached asset; a damaged one is an AssetError naming the repair."""
    path = asset_dir(name) / MARKER
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AssetError(f"asset {name!r}: its record {path} is damaged ({type(err).__name__}: {err}); "
                         f"fix: {repair_command(name)}") from err
    return record


def override_var(name: str) -> str:
    """The environment variable that points `name` at a local folder."""
    return "PLMKIT_ASSET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def resolve_local_override(name: str) -> Path | None:
    """A folder named by PLMKIT_ASSET_<NAME> wins over the cache, so users can bring their own copy."""
    var = override_var(name)
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise AssetError(f"{var}={value} is set for asset {name!r} but is not a folder; fix or unset it")
    return path


def offline_help(asset: Asset) -> str:
    return (
        f"To use a local copy instead: set {override_var(asset.name)}=/path/to/folder, "
        f"or pass a local folder path where the asset name {asset.name!r} is accepted, "
        f"or put {', '.join(r.filename for r in asset.archives)} into {cache_dir() / 'downloads'}."
    )


def say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"plmkit: {message}", file=sys.stderr, flush=True)


sha256_of = sha256_file  # the name the asset modules use


@contextlib.contextmanager
def lock(name: str, quiet: bool) -> Iterator[None]:
    """Hold an exclusive per-asset lock so two processes never build the same asset at once."""
    with file_lock(cache_dir() / "locks" / f"{name}.lock",
                   on_wait=lambda: say(f"waiting for another process fetching {name}", quiet)):
        yield


def install(root: Path, target: Path) -> None:
    """Move the built folder into place; an older or incomplete folder is swapped out, then removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(root, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
