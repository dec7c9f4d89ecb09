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
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.backbones import backbone_signature
from plmkit.errors import ConfigError, PlmkitError
from plmkit.mtl.saving import (
    ModuleFolderError,
    head_state,
    read_module_config,
    read_module_folder,
    write_module_folder,
)
from plmkit.mtl.sites import find_feed_forward_sites, install_block, remove_block

logger = logging.getLogger(__name__)

FORMAT = "plmkit-adapter"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class AdapterLoadError(PlmkitError):
    """A saved adapter that does not fit the backbone, or a folder that is not an adapter."""


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


class AdapterHandle:
    """What ``attach_adapters`` added: list, save, load and detach the adapters."""

    def __init__(self, model: nn.Module, config: AdapterConfig, sites: list, adapters: list[BottleneckAdapter],
                 frozen: list[nn.Parameter]) -> None:
        self.model = model
        self.config = config
        self.sites = sites
        self.adapters = nn.ModuleList(adapters)
        self._frozen = frozen

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.adapters.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors keyed ``layers.<i>.<down|up>.<weight|bias>``, independent of module paths."""
        return {f"layers.{k}": v for k, v in self.adapters.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        inner = {k.removeprefix("layers."): v for k, v in tensors.items()}
        self.adapters.load_state_dict(inner, strict=True)

    def detach(self) -> None:
        """Remove the adapters and unfreeze what ``attach_adapters`` froze."""
        for site in self.sites:
            remove_block(site)
        for param in self._frozen:
            param.requires_grad_(True)
        self.sites = []


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
    head_tensors, head_config = head_state(head)
    meta = {"adapter": asdict(handle.config), "backbone": backbone_signature(handle.model, backbone_name),
            "head": head_config, **(extra or {})}
    return write_module_folder(path, FORMAT, {"adapter": handle.state_dict(), "head": head_tensors}, meta)


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    try:
        return read_module_config(path, FORMAT, "adapter")
    except ModuleFolderError as error:
        raise AdapterLoadError(str(error)) from error


def check_backbone(meta: dict[str, Any], model: nn.Module, source: str, backbone_name: str = "") -> None:
    """Refuse a module trained on another architecture; warn when only the name differs."""
    saved, current = meta["backbone"], backbone_signature(model, backbone_name)
    diffs = [f"{key}: saved {saved[key]!r}, this backbone {current[key]!r}"
             for key in ("model_type", "hidden_size", "num_layers") if saved[key] != current[key]]
    if diffs:
        raise AdapterLoadError(
            f"{source} was trained on backbone {saved.get('name') or '?'} and does not fit this one ("
            + "; ".join(diffs) + "). Load it onto the backbone it was trained with, or retrain it."
        )
    if saved.get("name") and backbone_name and saved["name"] != backbone_name:
        warnings.warn(f"{source} was trained on {saved['name']!r}; loading onto {backbone_name!r} of the same shape",
                      stacklevel=2)


def load_adapter_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(config, adapter tensors, head tensors) of a saved adapter, without touching a model."""
    try:
        meta, groups = read_module_folder(path, FORMAT, "adapter")
    except ModuleFolderError as error:
        raise AdapterLoadError(str(error)) from error
    return meta, groups.get("adapter", {}), groups.get("head", {})


def load_adapter(path: str | Path, model: nn.Module, backbone_name: str = "",
                 freeze: bool = True) -> tuple[AdapterHandle, dict[str, Any], dict[str, torch.Tensor]]:
    """Attach a saved adapter to ``model``; returns (handle, config, head tensors)."""
    meta, adapter_tensors, head_tensors = load_adapter_weights(path)
    check_backbone(meta, model, str(path), backbone_name)
    handle = attach_adapters(model, AdapterConfig(**meta["adapter"]), freeze=freeze)
    reference = next(handle.adapters.parameters())
    handle.load_state_dict({k: v.to(reference.dtype) for k, v in adapter_tensors.items()})
    return handle, meta, head_tensors
