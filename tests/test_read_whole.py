"""Reads of folders that another process replaces: one whole version, real errors at once."""

import json

import pytest

from plmkit.io import atomic_directory, read_whole
from plmkit.mtl.store import AdapterStore


def _write(folder, version):
    with atomic_directory(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps({"version": version}))
        (tmp / "weights.safetensors").write_text(str(version))


def _read_pair(path):
    return json.loads((path / "config.json").read_text())["version"], int((path / "weights.safetensors").read_text())


def test_a_folder_replaced_between_two_files_is_read_again(tmp_path):
    folder = tmp_path / "entry"
    _write(folder, 1)
    calls = []

    def load(path):
        calls.append(1)
        config = json.loads((path / "config.json").read_text())["version"]
        if len(calls) == 1:
            _write(folder, 2)  # replaced after the config was read, before the weights
        return config, int((path / "weights.safetensors").read_text())

    assert read_whole(folder, load) == (2, 2)  # the mixed (1, 2) read is not returned
    assert len(calls) == 2


def test_a_folder_missing_mid_swap_is_waited_for(tmp_path):
    folder = tmp_path / "entry"
    _write(folder, 1)
    moved = tmp_path / ".entry.old"
    folder.rename(moved)  # between the two renames of a replacement
    calls = []

    def load(path):
        calls.append(1)
        if len(calls) == 2:
            moved.rename(folder)  # the swap completes while the reader waits
        return _read_pair(path)

    assert read_whole(folder, load) == (1, 1)
    assert len(calls) == 3  # failed while absent, succeeded but absent before, then a clean read


def test_an_error_in_a_folder_that_stayed_put_is_raised_at_once(tmp_path):
    folder = tmp_path / "entry"
    _write(folder, 1)
    calls = []

    def load(path):
        calls.append(1)
        raise ValueError("damaged")

    with pytest.raises(ValueError, match="damaged"):
        read_whole(folder, load)
    assert calls == [1]


def test_a_folder_that_never_appears_raises_the_loaders_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_whole(tmp_path / "absent", _read_pair, attempts=3)


def test_a_folder_rewritten_during_every_read_is_a_clear_error(tmp_path):
    folder = tmp_path / "entry"
    _write(folder, 0)
    counter = iter(range(1, 100))

    def load(path):
        result = _read_pair(path)
        _write(folder, next(counter))
        return result

    with pytest.raises(RuntimeError, match="replaced during each of 3 reads"):
        read_whole(folder, load, attempts=3)


def test_an_absent_folder_that_nobody_writes_is_not_waited_for(tmp_path, monkeypatch):
    import plmkit.io

    waits = []
    monkeypatch.setattr(plmkit.io.time, "sleep", waits.append)
    with pytest.raises(FileNotFoundError):
        read_whole(tmp_path / "entry", _read_pair)
    assert waits == []  # one read, no back-off
    staging = tmp_path / ".entry.x1.tmp"  # a writer's staging folder: the entry may appear any moment
    staging.mkdir()
    with pytest.raises(FileNotFoundError):
        read_whole(tmp_path / "entry", _read_pair, attempts=3)
    assert len(waits) == 2


def test_store_read_is_none_for_a_missing_key_and_loads_a_present_one(tmp_path, monkeypatch):
    import plmkit.io

    waits = []
    monkeypatch.setattr(plmkit.io.time, "sleep", waits.append)
    store = AdapterStore(tmp_path / "store")
    assert store.read("b/adapter/t/k", _read_pair) is None
    assert waits == []  # a missing key answers at once
    source = tmp_path / "module"
    _write(source, 7)
    store.put("b/adapter/t/k", source)
    assert store.read("b/adapter/t/k", _read_pair) == (7, 7)
