"""Checking cached assets against the sha256 of every file recorded in ``asset.json``.

A job verifies an asset the first time it uses it in a process. To keep that fast, a full check
stores each file's (sha256, size, mtime) in ``<cache>/verified/<name>.json``; later checks re-hash
only files whose size or mtime changed (or that the stamp does not know). ``verify`` always
re-hashes everything, archives included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from plmkit.assets.cache import asset_dir, cache_dir, is_cached, read_record, repair_command, sha256_of
from plmkit.assets.registry import REGISTRY, AssetError

_VERIFIED: set[str] = set()  # asset folders already checked in this process


def _stamp_path(name: str) -> Path:
    return cache_dir() / "verified" / f"{name}.json"


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _load_stamp(name: str) -> dict:
    try:
        stamp = json.loads(_stamp_path(name).read_text(encoding="utf-8"))
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}  # no stamp or a damaged one: everything is re-hashed


def record_stamp(name: str, files: dict[str, str]) -> None:
    """Remember (sha256, size, mtime) of files just checked; a cache we cannot write only costs speed."""
    folder = asset_dir(name)
    stamp = {rel: [sha, *_stat(folder / rel)] for rel, sha in files.items()}
    path = _stamp_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stamp), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def check_on_use(name: str) -> None:
    """Verify a cached asset once per process; raises AssetError naming the damage and the repair."""
    folder = asset_dir(name)
    if str(folder) in _VERIFIED:
        return
    recorded = read_record(name)["files"]
    missing = sorted(rel for rel in recorded if not (folder / rel).is_file())
    if missing:
        raise AssetError(
            f"asset {name!r}: {len(missing)} of its {len(recorded)} recorded files are missing from {folder} "
            f"(e.g. {', '.join(missing[:3])}); the cached copy is damaged; fix: {repair_command(name)}")
    stamp = _load_stamp(name)
    for rel, sha in recorded.items():
        if stamp.get(rel) != [sha, *_stat(folder / rel)] and sha256_of(folder / rel) != sha:
            raise AssetError(
                f"asset {name!r}: {folder / rel} does not match the sha256 recorded in {folder / 'asset.json'}; "
                f"the cached copy is damaged or was edited; fix: {repair_command(name)}")
    record_stamp(name, recorded)
    _VERIFIED.add(str(folder))


def forget_checks() -> None:
    """Make the next use of every asset in this process verify it again."""
    _VERIFIED.clear()


def verify(name: str) -> dict:
    """Re-hash the cached archives and extracted files, so silent disk corruption or edits show up."""
    asset = REGISTRY.get(name)
    if asset is None:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    archives = {}
    for ref in asset.archives:
        path = cache_dir() / "downloads" / ref.filename
        archives[ref.filename] = ("ok" if sha256_of(path) == ref.sha256 else "mismatch") if path.is_file() else "absent"
    problems = [f"archive {f}: mismatch" for f, status in archives.items() if status == "mismatch"]
    files: dict[str, str] = {}
    if is_cached(name):
        try:
            recorded = read_record(name)["files"]
        except AssetError as err:
            recorded = {}
            problems.append(f"record {asset_dir(name) / 'asset.json'} is damaged ({err.__cause__})")
        for rel, sha in recorded.items():
            path = asset_dir(name) / rel
            files[rel] = ("ok" if sha256_of(path) == sha else "mismatch") if path.is_file() else "missing"
        problems += [f"file {rel}: {status}" for rel, status in files.items() if status != "ok"]
        if recorded and not problems:
            record_stamp(name, recorded)
    else:
        problems.append("not cached")
    repair = repair_command(name) if problems else None
    return {"name": name, "ok": not problems, "archives": archives, "files": files, "problems": problems,
            "repair": repair}
