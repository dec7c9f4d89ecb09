"""Where transfer blocks plug into a model: after every layer's feed-forward block.

Every stage-1 and stage-2 method composes at the same place, found through ``plmkit.anatomy``.
A block is any ``nn.Module`` with ``forward(adapter_input, residual) -> o``.

Post-LN encoders ('bert' and 'distilbert' styles). With the feed-forward sub-layer output ``h``
(the residual ``r``), its input ``x`` and the layer's output LayerNorm ``LN``:

    a = LN(h + x)            # what an adapter reads
    o = block(a, r)          # the method: one adapter, a fusion, scaled sums ...
    layer output = LN(o + x) # the same LN re-used

Pre-LN decoders ('pre-ln' style: Llama, GPT-2). The layer computes ``x + MLP(norm(x))``; the site is
the MLP, whose output ``m`` is both what the block reads and its residual:

    o = block(m, m)          # a bottleneck adapter gives m + up(act(down(m)))
    layer output = x + o     # the layer adds its own residual, unchanged

We override the forward of the existing sub-module instead of wrapping it, so the backbone's
parameter names stay unchanged and pretrained state dicts still load; blocks live under the
attribute ``plmkit_block``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn

from plmkit.anatomy import UnsupportedModelError, locate
from plmkit.errors import ConfigError

BLOCK_ATTR = "plmkit_block"
_LN_ATTR = "_plmkit_layer_norm"
SITE_STYLES = ("bert", "distilbert", "pre-ln")

UnsupportedBackboneError = UnsupportedModelError
"""The earlier name of the error for a model with no feed-forward output we know how to hook."""


@dataclass
class FeedForwardSite:
    layer_index: int
    module: nn.Module  # the sub-module whose forward is replaced
    layer_norm: nn.Module | None  # the layer's output LayerNorm (re-used after the block); None for pre-LN
    style: str  # one of SITE_STYLES


def _bert_style_forward(self: nn.Module, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
    residual = self.dropout(self.dense(hidden_states))  # h: the feed-forward output
    adapter_input = self.LayerNorm(residual + input_tensor)
    return self.LayerNorm(getattr(self, BLOCK_ATTR)(adapter_input, residual) + input_tensor)


def _distilbert_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    residual = type(self).forward(self, hidden_states)  # the original FFN
    adapter_input = getattr(self, _LN_ATTR)(residual + hidden_states)
    # The enclosing block applies output_layer_norm(result + hidden_states) itself.
    return getattr(self, BLOCK_ATTR)(adapter_input, residual)


def _pre_ln_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    output = type(self).forward(self, hidden_states)  # the original MLP: m
    # The enclosing layer adds its residual x itself.
    return getattr(self, BLOCK_ATTR)(output, output)


_FORWARDS = {"bert": _bert_style_forward, "distilbert": _distilbert_forward, "pre-ln": _pre_ln_forward}


def find_feed_forward_sites(model: nn.Module) -> list[FeedForwardSite]:
    """One site per transformer layer, in order, read from the model's anatomy row."""
    found = locate(model)
    row = found.anatomy
    sites = []
    for index, layer in enumerate(found.layers):
        try:
            module = layer.get_submodule(row.feed_forward)
            norm = layer.get_submodule(row.site_norm) if row.site_norm else None
        except AttributeError as error:
            raise UnsupportedModelError(f"layer {index} ({type(layer).__name__}) of this {row.model_type} model has "
                                        f"no {row.feed_forward!r} feed-forward block to hook") from error
        sites.append(FeedForwardSite(index, module, norm, row.site_style))
    return sites


def install_block(site: FeedForwardSite, block: nn.Module) -> None:
    if hasattr(site.module, BLOCK_ATTR):
        raise ConfigError(f"layer {site.layer_index} already has a plmkit block; detach it first")
    site.module.add_module(BLOCK_ATTR, block)
    if site.style == "distilbert":
        site.module.__dict__[_LN_ATTR] = site.layer_norm  # a reference, not a second registration
    site.module.forward = types.MethodType(_FORWARDS[site.style], site.module)


def remove_block(site: FeedForwardSite) -> nn.Module:
    block = getattr(site.module, BLOCK_ATTR)
    delattr(site.module, BLOCK_ATTR)
    site.module.__dict__.pop("forward", None)
    site.module.__dict__.pop(_LN_ATTR, None)
    return block
