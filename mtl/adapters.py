"""Stage 1: a bottleneck adapter after every layer's feed-forward block (sequential, "Pfeiffer").

Per layer, with a = LN(h + x) and r = h (see ``sites``): u = W_up ReLU(W_down a + b_d) + b_up and
the layer output is LN(u + r + x). The backbone is frozen; only adapters (and the task head) train.

Init: ``"bert"`` draws every adapter weight from Normal(0, 0.02) with zero biases (the reference
default); ``"identity"`` also zeroes W_up so the adapted model starts exactly as the backbone.
Saved as ``config.json`` + ``weights.safetensors`` holding only adapter (and head) tensors, keyed by
layer index, so stage-2 methods can load several sources onto one backbone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.backbones import backbone_signature
from plmkit.errors import ConfigError
from plmkit.handles import Handle
from plmkit.mtl.registry import SourceKind, register_source_kind
from plmkit.saving import (
    ModuleFolderError,
    check_backbone,
    check_tensors,
    read_module_config,
    read_module_folder,
)
from plmkit.sites import find_feed_forward_sites, install_block

logger = logging.getLogger(__name__)

FORMAT = "plmkit-adapter"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


AdapterLoadError = ModuleFolderError
"""A saved adapter that does not fit the backbone, or a folder that is not an adapter (kept name)."""

KIND = "adapter"


@dataclass
class AdapterConfig:
    reduction_factor: int = 16
    """Bottleneck width = hidden size / reduction_factor."""
    non_linearity: str = "relu"
    init: str = "bert"
    """'bert': Normal(0, 0.02) weights, zero biases; 'identity': W_up = 0 too (exact identity start)."""

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        if self.non_linearity not in ACTIVATIONS:
            raise ConfigError(f"non_linearity must be one of {sorted(ACTIVATIONS)}, got {self.non_linearity!r}")
        if self.init not in ("bert", "identity"):
            raise ConfigError(f"init must be 'bert' or 'identity', got {self.init!r}")

    def bottleneck(self, hidden_size: int) -> int:
        return max(1, hidden_size // self.reduction_factor)


class BottleneckAdapter(nn.Module):
    """u = W_up act(W_down a + b_d) + b_up; as a site block it returns u + r."""

    def __init__(self, hidden_size: int, bottleneck: int, non_linearity: str = "relu", init: str = "bert") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, hidden_size)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        if init == "identity":
            nn.init.zeros_(self.up.weight)

    def delta(self, adapter_input: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(adapter_input)))

    def forward(self, adapter_input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.delta(adapter_input) + residual


class AdapterHandle(Handle):
    """What ``attach_adapters`` added: list, save, load and detach the adapters."""

    format = FORMAT
    prefix = "adapter"

    def __init__(self, model: nn.Module, config: AdapterConfig, sites: list, adapters: list[BottleneckAdapter],
                 frozen: list[nn.Parameter]) -> None:
        super().__init__(model, sites, adapters, frozen)
        self.config = config

    @property
    def adapters(self) -> nn.ModuleList:
        return self.blocks

    def meta(self) -> dict[str, Any]:
        return {"kind": KIND, "adapter": asdict(self.config)}


def attach_adapters(model: nn.Module, config: AdapterConfig | None = None, freeze: bool = True) -> AdapterHandle:
    """Add one bottleneck adapter per layer of a BERT-family encoder and freeze the backbone."""
    config = config or AdapterConfig()
    sites = find_feed_forward_sites(model)
    frozen = [p for p in model.parameters() if p.requires_grad] if freeze else []
    for param in frozen:
        param.requires_grad_(False)
    hidden = backbone_signature(model)["hidden_size"]
    reference = next(model.parameters())
    adapters = []
    for site in sites:
        adapter = BottleneckAdapter(hidden, config.bottleneck(hidden), config.non_linearity, config.init)
        adapter.to(device=reference.device, dtype=reference.dtype)
        install_block(site, adapter)
        adapters.append(adapter)
    return AdapterHandle(model, config, sites, adapters, frozen)


# ------------------------------------------------------------------------------ save / load
def save_adapter(path: str | Path, handle: AdapterHandle, head: nn.Module | None = None,
                 backbone_name: str = "", extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``weights.safetensors`` (adapters and head only) atomically."""
    return handle.save(path, head=head, backbone_name=backbone_name, extra=extra)


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    return read_module_config(path, FORMAT, "adapter")


def adapter_config_from_meta(meta: dict[str, Any], source: str) -> AdapterConfig:
    """The ``AdapterConfig`` a saved adapter records; a damaged record names the folder."""
    try:
        return AdapterConfig(**meta["adapter"])
    except (KeyError, TypeError, ConfigError) as error:
        raise AdapterLoadError(f"{source}: config.json has no usable adapter config ({error}); "
                               "delete the folder and train the adapter again") from error


def load_adapter_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(config, adapter tensors, head tensors) of a saved adapter, without touching a model."""
    meta, groups = read_module_folder(path, FORMAT, "adapter")
    return meta, groups.get("adapter", {}), groups.get("head", {})


def load_adapter(path: str | Path, model: nn.Module, backbone_name: str = "",
                 freeze: bool = True) -> tuple[AdapterHandle, dict[str, Any], dict[str, torch.Tensor]]:
    """Attach a saved adapter to ``model``; returns (handle, config, head tensors)."""
    meta, adapter_tensors, head_tensors = load_adapter_weights(path)
    check_backbone(meta, model, str(path), backbone_name)
    handle = attach_adapters(model, adapter_config_from_meta(meta, str(path)), freeze=freeze)
    try:
        handle.load_state_dict(adapter_tensors, source=f"adapter {path}")
    except AdapterLoadError:
        handle.detach()
        raise
    return handle, meta, head_tensors


# ------------------------------------------------------------------------------ stage-1 kind
def expected_adapter_shapes(config: AdapterConfig, hidden: int, num_layers: int) -> dict[str, torch.Size]:
    """The tensors a saved adapter of ``config`` holds on a (hidden, num_layers) backbone."""
    bottleneck = config.bottleneck(hidden)
    per_layer = {"down.weight": (bottleneck, hidden), "down.bias": (bottleneck,),
                 "up.weight": (hidden, bottleneck), "up.bias": (hidden,)}
    return {f"layers.{i}.{name}": torch.Size(shape) for i in range(num_layers) for name, shape in per_layer.items()}


def read_adapter(path: str | Path, model: nn.Module, source: str, backbone_name: str = ""
                 ) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """A saved adapter's config and tensors, checked against ``model`` (backbone and tensor shapes)."""
    meta, tensors, _ = load_adapter_weights(path)
    check_backbone(meta, model, source, backbone_name)
    config = adapter_config_from_meta(meta, source)
    signature = backbone_signature(model)
    expected = expected_adapter_shapes(config, signature["hidden_size"], signature["num_layers"])
    check_tensors(expected, tensors, source)
    return config, tensors


def stack_adapters(config: AdapterConfig, tensors: list[dict[str, torch.Tensor]], layer: int) -> nn.Module:
    """N sources' adapters of one layer as one frozen ``SourceAdapters`` module."""
    from plmkit.mtl.sources import SourceAdapters

    prefix = f"layers.{layer}."
    states = [{k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)} for t in tensors]
    return SourceAdapters.from_layer_states(states, config.non_linearity)


register_source_kind(SourceKind(name=KIND, config_class=AdapterConfig, attach=attach_adapters, save=save_adapter,
                                load=load_adapter, read=read_adapter, stack=stack_adapters))
