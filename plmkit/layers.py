"""Layer subsets: keep some transformer layers of a model, in a chosen order.

``keep_layers(model, [0, 2, 5])`` replaces the anatomy's layer list by those layers (the same
module objects, so weights are shared with nothing else once the rest is dropped) and writes the new
depth to the config attribute the anatomy names, so ``save_pretrained`` / ``from_pretrained``
round-trip. Each kept layer computes exactly what it computed in the original model: keeping the
first k layers gives the hidden state the full model has after layer k. Layers that index a
key/value cache by position (``layer_idx``) are renumbered, and a per-layer ``config.layer_types``
list is subset with them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from plmkit.anatomy import locate
from plmkit.errors import ConfigError
from plmkit.inject import set_module


def _check_indices(indices: Sequence[int], depth: int) -> list[int]:
    chosen = list(indices)
    if not chosen:
        raise ConfigError(f"keep at least one layer: the index list is empty (the model has layers 0..{depth - 1})")
    bad = [i for i in chosen if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth]
    if bad:
        raise ConfigError(f"layer indices {bad} are out of range: the model has layers 0..{depth - 1}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"layer indices {chosen} repeat a layer; each layer can be kept once")
    return chosen


def _renumber(layer: nn.Module, index: int) -> None:
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def keep_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """Keep only layers ``indices`` (in that order) of ``model``, in place; returns ``model``."""
    found = locate(model)
    row, config = found.anatomy, found.base.config
    old = found.layers
    chosen = _check_indices(indices, len(old))
    kept = nn.ModuleList(old[i] for i in chosen)
    for new_index, layer in enumerate(kept):
        _renumber(layer, new_index)
    set_module(found.base, row.layers, kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(old):
        config.layer_types = [layer_types[i] for i in chosen]
    setattr(config, row.depth_attr, len(chosen))
    if getattr(model, "config", config) is not config:  # a wrapper with its own config copy
        setattr(model.config, row.depth_attr, len(chosen))
    return model
