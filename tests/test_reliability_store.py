"""The store reuses only what matches by content, stage 1 is reproducible, and the store is safe
under concurrency; a damaged entry is one clear error."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from plmkit.cli import main
from plmkit.mtl.adapters import AdapterConfig, attach_adapters, save_adapter
from plmkit.mtl.store import AdapterStore
from plmkit.mtl.transfer import Composition, SourceRef, attach_transfer
from plmkit.saving import ModuleFolderError
from tests.test_cli import _write_task


def _transfer(tmp_path, backbone, source, store, run):
    return main(["transfer", "--sources", str(source), "--no-include-target-adapter",
                 "--target", str(tmp_path / "target"), "--backbone", str(backbone), "--store", str(store),
                 "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--no-progress",
                 "--output-dir", str(tmp_path / run)])


def _entries(store):
    return {p.parent: load_file(str(p)) for p in store.rglob("weights.safetensors")}


def test_stage1_is_reproducible_and_keyed_by_content(tmp_path, tiny_backbone_dir, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    source = _write_task(tmp_path / "src")
    _write_task(tmp_path / "target")
    torch.manual_seed(123)  # a different global RNG state before each run must not matter
    assert _transfer(tmp_path, tiny_backbone_dir, source, tmp_path / "s1", "r1") == 0
    torch.manual_seed(456)
    assert _transfer(tmp_path, tiny_backbone_dir, source, tmp_path / "s2", "r2") == 0
    (first,), (second,) = _entries(tmp_path / "s1").values(), _entries(tmp_path / "s2").values()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # bit for bit

    # the same data file rewritten in place with other rows: retrained, not reused
    _write_task(source, n_train=40)
    assert _transfer(tmp_path, tiny_backbone_dir, source, tmp_path / "s1", "r3") == 0
    assert len(_entries(tmp_path / "s1")) == 2

    # the local backbone's weights rewritten in place: retrained again
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_backbone_dir)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(1.5)
    model.save_pretrained(tiny_backbone_dir)
    assert _transfer(tmp_path, tiny_backbone_dir, source, tmp_path / "s1", "r4") == 0
    assert len(_entries(tmp_path / "s1")) == 3
    assert "reusing" not in (tmp_path / "r4" / "run.log").read_text()


def _adapter_folder(make_encoder, path, seed):
    torch.manual_seed(seed)
    backbone = make_encoder("bert")
    return save_adapter(path, attach_adapters(backbone.model, AdapterConfig(reduction_factor=4)),
                        backbone_name="tiny-bert")


def test_concurrent_puts_and_reads_see_whole_entries(make_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    store = AdapterStore(tmp_path / "store")
    folders = [_adapter_folder(make_encoder, tmp_path / f"a{i}", i) for i in range(6)]
    expected = [load_file(str(f / "weights.safetensors")) for f in folders]
    errors, seen, stop = [], [], threading.Event()

    def writer(folder):
        try:
            for _ in range(5):
                store.put("tiny-bert/adapter/task/key", folder)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    def reader():
        while not stop.is_set():
            try:
                found = store.read("tiny-bert/adapter/task/key", lambda path: load_file(str(path / "weights.safetensors")))
            except Exception as error:  # noqa: BLE001 - a read that fails while entries are replaced is the bug
                errors.append(error)
            else:
                if found is not None:
                    seen.append(found)

    threads = [threading.Thread(target=writer, args=(f,)) for f in folders] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join()
    stop.set()
    threads[-1].join()
    assert errors == []
    assert seen  # the reader read while the writers replaced the entry
    final = load_file(str(store.get("tiny-bert/adapter/task/key") / "weights.safetensors"))
    for tensors in [final, *seen]:
        assert any(all(torch.equal(tensors[k], e[k]) for k in e) for e in expected)
    staging = [p for p in store.root.rglob("*") if p.name.startswith(".") and ".locks" not in p.parts]
    assert not staging  # no staging left behind (the lock files live in <store>/.locks)


def test_a_second_run_waits_for_the_lock_and_reuses(make_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    store = AdapterStore(tmp_path / "store")
    folder = _adapter_folder(make_encoder, tmp_path / "a", 0)
    builds, results = [], []

    def build():
        builds.append(1)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one trains
        return folder

    threads = [threading.Thread(target=lambda: results.append(store.get_or_put("b/adapter/t/k", build)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert sorted(reused for _, reused in results) == [False, True, True]


def test_a_store_entry_with_wrong_shapes_is_one_clear_error(make_encoder, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    store = AdapterStore(tmp_path / "store")
    refs = []
    for i in range(2):
        key = f"tiny-bert/adapter/task{i}/abc"
        path = store.put(key, _adapter_folder(make_encoder, tmp_path / f"a{i}", i))
        refs.append(SourceRef(f"task{i}", str(path), key))
    weights = store.path(refs[1].key) / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors["adapter.layers.1.up.weight"] = torch.zeros(32, 5)  # the config builds (32, 8)
    save_file(tensors, str(weights))
    with pytest.raises(ModuleFolderError, match=r"task1/abc.*layers.1.up.weight: saved \(32, 5\).*delete"):
        attach_transfer(make_encoder("bert").model, Composition("scalearn", refs))
