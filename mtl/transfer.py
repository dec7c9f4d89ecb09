"""Stage 2 over frozen source adapters: compose, attach, save and load a transfer setup.

A setup is data (``Composition``): which method, which variant, which sources (by adapter-store
key and folder). ``attach_transfer`` turns it into one block per layer over a frozen backbone;
``save_transfer`` writes the composition, the transfer weights and the head — never the sources —
and ``load_transfer`` rebuilds exactly what was trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.handles import Handle
from plmkit.mtl.adapters import AdapterLoadError, check_backbone, load_adapter_weights
from plmkit.mtl.fusion import FusionBlock, FusionConfig
from plmkit.mtl.scalearn import VARIANTS, ScaLearnConfig, ScaleBlock, init_scales
from plmkit.mtl.sites import find_feed_forward_sites, install_block
from plmkit.mtl.sources import SourceAdapters
from plmkit.saving import read_module_folder

FORMAT = "plmkit-transfer"
METHODS = ("fusion", *VARIANTS)


@dataclass
class SourceRef:
    """A source adapter: its task name, its folder, and its adapter-store key (if stored)."""

    name: str
    path: str
    key: str | None = None


@dataclass
class Composition:
    """A stage-2 setup as data: method, its config, and the ordered sources."""

    method: str
    sources: list[SourceRef]
    fusion: FusionConfig | None = None
    scalearn: ScaLearnConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown transfer method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.sources:
            raise ConfigError("a transfer setup needs at least one source adapter")
        if self.method == "fusion":
            self.fusion = self.fusion or FusionConfig()
        else:
            self.scalearn = self.scalearn or ScaLearnConfig(variant=self.method)
            if self.scalearn.variant != self.method:
                raise ConfigError(f"method {self.method!r} but ScaLearn variant {self.scalearn.variant!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "sources": [asdict(s) for s in self.sources],
                "fusion": self.fusion.to_dict() if self.fusion else None,
                "scalearn": self.scalearn.to_dict() if self.scalearn else None, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Composition:
        return cls(
            method=data["method"], sources=[SourceRef(**s) for s in data["sources"]],
            fusion=FusionConfig(**data["fusion"]) if data.get("fusion") else None,
            scalearn=ScaLearnConfig(**data["scalearn"]) if data.get("scalearn") else None,
            extra=data.get("extra", {}),
        )


class TransferHandle(Handle):
    """What ``attach_transfer`` added to a backbone."""

    format = FORMAT
    prefix = "transfer"

    def __init__(self, model: nn.Module, composition: Composition, sites: list, blocks: list[nn.Module],
                 frozen: list[nn.Parameter]) -> None:
        super().__init__(model, sites, blocks, frozen)
        self.composition = composition

    def meta(self) -> dict[str, Any]:
        return {"composition": self.composition.to_dict()}

    def regularization(self) -> torch.Tensor | None:
        """Sum of the regularisers the blocks computed in this step's forward (None if none)."""
        terms = [t for t in (block.regularization() for block in self.blocks) if t is not None]
        return torch.stack([t.float() for t in terms]).sum() if terms else None

    def source_weights(self) -> torch.Tensor:
        """(layers, sources): mean scale (ScaLearn) or mean attention while recording (fusion)."""
        return torch.stack([block.source_weights().cpu() for block in self.blocks])

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Accumulate per-source weights over the forward passes inside the block (blocks that record)."""
        recorders = [b for b in self.blocks if hasattr(b, "start_recording")]
        for block in recorders:
            block.start_recording()
        try:
            yield
        finally:
            for block in recorders:
                block.recording = False


def _load_sources(composition: Composition, model: nn.Module, backbone_name: str) -> tuple[dict, list[dict]]:
    """Read every source adapter, check it fits the backbone and that all share one adapter config."""
    configs, tensors = [], []
    for ref in composition.sources:
        if not Path(ref.path).is_dir():
            raise AdapterLoadError(
                f"source adapter {ref.name!r} is missing: {ref.path} does not exist"
                + (f" (store key {ref.key})" if ref.key else "") + "; train it again or point to its folder"
            )
        meta, adapter_tensors, _ = load_adapter_weights(ref.path)
        check_backbone(meta, model, f"source adapter {ref.name!r} ({ref.path})", backbone_name)
        configs.append(meta["adapter"])
        tensors.append(adapter_tensors)
    if any(c != configs[0] for c in configs):
        raise AdapterLoadError(
            "all source adapters must share one adapter config to be stacked; found "
            + "; ".join(f"{r.name}: {c}" for r, c in zip(composition.sources, configs, strict=True))
        )
    return configs[0], tensors


def _layer_states(tensors: list[dict], layer: int) -> list[dict[str, torch.Tensor]]:
    prefix = f"layers.{layer}."
    return [{k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)} for t in tensors]


def attach_transfer(model: nn.Module, composition: Composition, backbone_name: str = "") -> TransferHandle:
    """Freeze ``model`` and add one stage-2 block per layer over the composition's sources."""
    adapter_config, tensors = _load_sources(composition, model, backbone_name)
    sites = find_feed_forward_sites(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    reference = next(model.parameters())
    shared = None
    blocks = []
    for site in sites:
        sources = SourceAdapters.from_layer_states(_layer_states(tensors, site.layer_index),
                                                   adapter_config["non_linearity"])
        if composition.method == "fusion":
            block = FusionBlock(sources, composition.fusion)
        else:
            config = composition.scalearn
            if config.shared and shared is None:
                width = sources.hidden_size if config.per_dimension else 1
                shared = init_scales(sources.num_sources, width, config.init_std)
            block = ScaleBlock(sources, config, scales=shared if config.shared else None)
        block.to(device=reference.device, dtype=reference.dtype)
        install_block(site, block)
        blocks.append(block)
    return TransferHandle(model, composition, sites, blocks, frozen)


def save_transfer(path: str | Path, handle: TransferHandle, head: nn.Module | None = None,
                  backbone_name: str = "", extra: dict[str, Any] | None = None) -> Path:
    """``config.json`` (composition + backbone + head) and ``weights.safetensors`` (transfer + head)."""
    return handle.save(path, head=head, backbone_name=backbone_name, extra=extra)


def load_transfer(path: str | Path, model: nn.Module, backbone_name: str = ""
                  ) -> tuple[TransferHandle, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild a saved stage-2 setup on ``model``; returns (handle, config, head tensors)."""
    meta, groups = read_module_folder(path, FORMAT, "transfer setup")
    check_backbone(meta, model, str(path), backbone_name)
    handle = attach_transfer(model, Composition.from_dict(meta["composition"]), backbone_name)
    try:
        handle.load_state_dict(groups.get("transfer", {}), source=f"transfer setup {path}")
    except AdapterLoadError:
        handle.detach()
        raise
    return handle, meta, groups.get("head", {})
