"""The source store: keys by kind, listing, and clear errors for damaged saved folders."""

from __future__ import annotations

import pytest
import torch

from plmkit.mtl.adapters import AdapterConfig, attach_adapters, load_adapter, save_adapter
from plmkit.mtl.store import AdapterStore, store_key
from plmkit.saving import ModuleFolderError

SIGNATURE = {"name": "tiny-bert", "model_type": "bert", "hidden_size": 32, "num_layers": 2}


def test_keys_differ_by_kind_and_list_filters_backbone_and_kind(make_encoder, tmp_path):
    store = AdapterStore(tmp_path / "store")
    backbone = make_encoder("bert")
    folder = save_adapter(tmp_path / "ad", attach_adapters(backbone.model), backbone_name="tiny-bert")
    adapter_key = store_key(SIGNATURE, "data/sst2.csv", {"epochs": 1})
    prompt_key = store_key(SIGNATURE, "data/sst2.csv", {"epochs": 1}, kind="prompt")
    other_key = store_key({**SIGNATURE, "name": "other"}, "mnli", {"epochs": 1})
    assert adapter_key.split("/")[:3] == ["tiny-bert", "adapter", "sst2.csv"] and adapter_key != prompt_key
    for key in (adapter_key, prompt_key, other_key):
        store.put(key, folder)
    (store.root / "tiny-bert" / "adapter" / "half" / "abc").mkdir(parents=True)  # incomplete: not an entry
    assert {e.key for e in store.list()} == {adapter_key, prompt_key, other_key}
    assert [e.key for e in store.list(backbone="tiny-bert", kind="adapter")] == [adapter_key]
    assert [e.task for e in store.list(kind="prompt")] == ["sst2.csv"]
    assert [e.key for e in store.list(backbone="other")] == [other_key]


def test_truncated_weights_are_one_clear_error(make_encoder, tmp_path):
    backbone = make_encoder("bert")
    save_adapter(tmp_path / "ad", attach_adapters(backbone.model), backbone_name="tiny-bert")
    weights = tmp_path / "ad" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModuleFolderError, match=r"weights.safetensors cannot be read.*truncated"):
        load_adapter(tmp_path / "ad", make_encoder("bert").model)


def test_tensors_that_do_not_fit_the_config_name_the_folder(make_encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    backbone = make_encoder("bert")
    save_adapter(tmp_path / "ad", attach_adapters(backbone.model, AdapterConfig(reduction_factor=4)))
    weights = tmp_path / "ad" / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors["adapter.layers.0.down.weight"] = torch.zeros(3, 32)
    save_file(tensors, str(weights))
    model = make_encoder("bert").model
    with pytest.raises(ModuleFolderError, match=r"ad.*layers.0.down.weight: saved \(3, 32\).*delete"):
        load_adapter(tmp_path / "ad", model)
    assert not any("plmkit_block" in name for name, _ in model.named_modules())  # nothing left attached
