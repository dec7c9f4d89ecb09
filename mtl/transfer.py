"""Stage 2 over frozen source modules: compose, attach, save and load a transfer setup.

A setup is data (``Composition``): which registered method, its config, and which sources (each
with its stage-1 kind, folder and store key). ``attach_transfer`` looks the method up in the
registry and builds one block per layer over the stacked frozen sources; ``save_transfer`` writes
the composition, the transfer weights and the head — never the sources — and ``load_transfer``
rebuilds exactly what was trained (also from setups saved with one field per method).
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
from plmkit.io import read_whole
from plmkit.mtl.registry import TransferMethod, source_kind, transfer_method, transfer_methods
from plmkit.saving import ModuleFolderError, check_backbone, read_module_folder
from plmkit.sites import find_feed_forward_sites, install_block

FORMAT = "plmkit-transfer"
METHODS = tuple(name for name, method in transfer_methods().items() if method.uses_sources)
"""The built-in stage-2 methods over sources (the registry is the live list)."""
LEGACY_CONFIG_FIELDS = ("fusion", "scalearn")
"""One config field per method, as setups saved before the registry wrote them."""


@dataclass
class SourceRef:
    """A source module: its task name, its folder, its store key (if stored) and its stage-1 kind."""

    name: str
    path: str
    key: str | None = None
    kind: str = "adapter"


@dataclass
class Composition:
    """A stage-2 setup as data: a registered method, its config, and the ordered sources."""

    method: str
    sources: list[SourceRef]
    config: Any = None
    """The method's config (its registered class); None builds the default."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.spec
        if not spec.uses_sources:
            raise ConfigError(f"{self.method!r} uses no source modules; it is not a transfer setup")
        if not self.sources:
            raise ConfigError("a transfer setup needs at least one source module")
        self.config = self.config if self.config is not None else spec.make_config()
        spec.check_config(self.config)
        kinds = sorted({s.kind for s in self.sources} - set(spec.source_kinds))
        if kinds:
            raise ConfigError(f"method {self.method!r} composes {', '.join(spec.source_kinds)} sources, "
                              f"not {', '.join(kinds)}")

    @property
    def spec(self) -> TransferMethod:
        return transfer_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": asdict(self.config),
                "sources": [asdict(s) for s in self.sources], "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Composition:
        """Read both layouts: ``config`` (now) and one field per method (the earlier release)."""
        spec = transfer_method(data["method"])
        config = data.get("config")
        if config is None:
            config = next((data[k] for k in LEGACY_CONFIG_FIELDS if data.get(k)), None)
        return cls(method=data["method"], sources=[SourceRef(**s) for s in data["sources"]],
                   config=spec.config_from_dict(config) if config is not None else None,
                   extra=data.get("extra", {}))


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


def _load_sources(composition: Composition, model: nn.Module, backbone_name: str) -> tuple[Any, Any, list[dict]]:
    """Read every source, check it fits the backbone and that all share one kind and one config."""
    configs, tensors = [], []
    for ref in composition.sources:
        where = f" (store key {ref.key})" if ref.key else ""
        if not Path(ref.path).is_dir():
            raise ModuleFolderError(f"source adapter {ref.name!r} is missing: {ref.path} does not exist{where}; "
                                    "train it again or point to its folder")
        config, source_tensors = read_whole(ref.path, lambda path, ref=ref, where=where: source_kind(ref.kind).read(
            path, model, f"source {ref.kind} {ref.name!r} ({ref.path}){where}", backbone_name))
        configs.append((ref.kind, config))
        tensors.append(source_tensors)
    if any(c != configs[0] for c in configs):
        raise ModuleFolderError(
            "all sources must be of one kind and share one adapter config to be stacked; found "
            + "; ".join(f"{r.name}: {k} {c}" for r, (k, c) in zip(composition.sources, configs, strict=True))
        )
    kind, config = configs[0]
    return source_kind(kind), config, tensors


def attach_transfer(model: nn.Module, composition: Composition, backbone_name: str = "") -> TransferHandle:
    """Freeze ``model`` and add one stage-2 block per layer over the composition's stacked sources."""
    kind, source_config, tensors = _load_sources(composition, model, backbone_name)
    sites = find_feed_forward_sites(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    reference = next(model.parameters())
    build, shared, blocks = composition.spec.build_block, {}, []
    for site in sites:
        block = build(kind.stack(source_config, tensors, site.layer_index), composition.config, shared)
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
    except ModuleFolderError:
        handle.detach()
        raise
    return handle, meta, groups.get("head", {})
