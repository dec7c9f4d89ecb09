"""Fetching: resolve a name to a ready folder, verifying a cached one and building a missing one."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from plmkit.assets.build import build
from plmkit.assets.cache import asset_dir, install, is_cached, lock, read_record, resolve_local_override, say
from plmkit.assets.checks import _VERIFIED, check_on_use, record_stamp
from plmkit.assets.registry import REGISTRY, Asset, AssetError


def _resolve(name_or_asset: str | os.PathLike[str] | Asset) -> Asset | Path:
    """An Asset for a registry name, or the folder itself when given a local path."""
    if isinstance(name_or_asset, Asset):
        return name_or_asset
    text = os.fspath(name_or_asset)
    if text in REGISTRY:
        return REGISTRY[text]
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if isinstance(name_or_asset, os.PathLike) or any(c in text for c in "/\\~") or text.startswith("."):
        raise AssetError(f"local asset folder {text!r} does not exist")
    raise AssetError(f"unknown asset {text!r}; known: {', '.join(sorted(REGISTRY))}, or give a local folder path")


def fetch(name_or_asset: str | os.PathLike[str] | Asset, *, force: bool = False, quiet: bool = False) -> Path:
    """Return the ready folder of an asset, downloading, verifying and extracting it first if needed.

    A cached asset is checked against its recorded sha256s on its first use in a process; ``force``
    rebuilds it, from the archive kept in ``<cache>/downloads/`` when there is one (offline).
    """
    asset = _resolve(name_or_asset)
    if isinstance(asset, Path):
        return asset
    override = resolve_local_override(asset.name)
    if override is not None:
        return override
    target = asset_dir(asset.name)
    if is_cached(asset.name) and not force:
        check_on_use(asset.name)
        return target
    with lock(asset.name, quiet):
        if is_cached(asset.name) and not force:  # another process finished while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in (*target.parent.glob(f".{asset.name}.stage-*"), *target.parent.glob(f".{asset.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed fetch; safe, since we hold the lock
        stage = target.parent / f".{asset.name}.stage-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()  # unlike mkdtemp, honours the umask: the folder is renamed into place as is
        try:
            install(build(asset, stage, quiet), target)
        except AssetError:
            raise
        except Exception as err:
            raise AssetError(f"asset {asset.name!r}: fetching {asset.spec} failed: {err!r}") from err
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        _VERIFIED.discard(str(target))
        record_stamp(asset.name, read_record(asset.name)["files"])  # hashed just now, while building
    say(f"{asset.name} ready at {target}", quiet)
    return target


def list_assets() -> list[dict]:
    """One row per registry entry, for `plmkit assets`-style listings."""
    rows = []
    for asset in REGISTRY.values():
        cached, folder = is_cached(asset.name), asset_dir(asset.name)
        rows.append({
            "name": asset.name,
            "kind": asset.kind,
            "package": asset.spec,
            "download_bytes": sum(r.size for r in asset.archives) or None,
            "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if cached else None,
            "licence": asset.licence,
            "description": asset.description,
            "cached": cached,
            "path": str(folder),
        })
    return rows
