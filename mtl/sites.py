"""Where transfer blocks plug into an encoder: after every layer's feed-forward block.

Every stage-1 and stage-2 method in this package composes at the same place. With the feed-forward
sub-layer output ``h`` (the residual ``r``), its input ``x`` and the layer's output LayerNorm ``LN``:

    a = LN(h + x)            # what an adapter reads
    o = block(a, r)          # the method: one adapter, a fusion, scaled sums ...
    layer output = LN(o + x) # the same LN re-used

A block is any ``nn.Module`` with ``forward(adapter_input, residual) -> o``. We override the forward
of the existing sub-module instead of wrapping it, so the backbone's parameter names stay unchanged
and pretrained state dicts still load; blocks live under the attribute ``plmkit_block``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError, PlmkitError

BLOCK_ATTR = "plmkit_block"
_LN_ATTR = "_plmkit_layer_norm"


class UnsupportedBackboneError(PlmkitError):
    """The encoder has no feed-forward output we know how to hook."""


@dataclass
class FeedForwardSite:
    layer_index: int
    module: nn.Module  # the sub-module whose forward is replaced
    layer_norm: nn.Module  # the layer's output LayerNorm (re-used after the block)
    style: str  # "bert" (BertOutput-like) or "distilbert" (FFN + output_layer_norm)


def _bert_style_forward(self: nn.Module, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    residual = self.dropout(self.dense(hidden_states))  # h: the feed-forward output
    adapter_input = self.LayerNorm(residual + input_tensor)
    return self.LayerNorm(getattr(self, BLOCK_ATTR)(adapter_input, residual) + input_tensor)


def _distilbert_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    residual = type(self).forward(self, hidden_states)  # the original FFN
    adapter_input = getattr(self, _LN_ATTR)(residual + hidden_states)
    # The enclosing block applies output_layer_norm(result + hidden_states) itself.
    return getattr(self, BLOCK_ATTR)(adapter_input, residual)


def _layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in ("encoder.layer", "transformer.layer"):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return path, layers
    raise UnsupportedBackboneError(
        f"{type(model).__name__} has no encoder.layer / transformer.layer list; supported encoders are "
        "BERT, RoBERTa, XLM-R, DistilBERT and MPNet loaded with AutoModel"
    )


def find_feed_forward_sites(model: nn.Module) -> list[FeedForwardSite]:
    """One site per transformer layer, in order."""
    _, layers = _layers(model)
    sites = []
    for index, layer in enumerate(layers):
        output = getattr(layer, "output", None)
        if output is not None and all(hasattr(output, n) for n in ("dense", "dropout", "LayerNorm")):
            sites.append(FeedForwardSite(index, output, output.LayerNorm, "bert"))
        elif hasattr(layer, "ffn") and hasattr(layer, "output_layer_norm"):
            sites.append(FeedForwardSite(index, layer.ffn, layer.output_layer_norm, "distilbert"))
        else:
            raise UnsupportedBackboneError(f"layer {index} ({type(layer).__name__}) has no known feed-forward output")
    return sites


def install_block(site: FeedForwardSite, block: nn.Module) -> None:
    if hasattr(site.module, BLOCK_ATTR):
        raise ConfigError(f"layer {site.layer_index} already has a plmkit block; detach it first")
    site.module.add_module(BLOCK_ATTR, block)
    forward = _bert_style_forward if site.style == "bert" else _distilbert_forward
    if site.style == "distilbert":
        site.module.__dict__[_LN_ATTR] = site.layer_norm  # a reference, not a second registration
    site.module.forward = types.MethodType(forward, site.module)


def remove_block(site: FeedForwardSite) -> nn.Module:
    block = getattr(site.module, BLOCK_ATTR)
    delattr(site.module, BLOCK_ATTR)
    site.module.__dict__.pop("forward", None)
    site.module.__dict__.pop(_LN_ATTR, None)
    return block
