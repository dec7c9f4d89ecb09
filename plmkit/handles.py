"""One protocol for what any ``attach_*`` function returns: a ``Handle``.

A handle knows the model it changed, the sites it changed, the blocks it added (whose parameters
are the trainable ones) and the backbone parameters it froze. Its tensors are keyed independently
of module paths: ``layers.<i>.<name>`` for a block's own tensors and ``shared.<name>`` for one
parameter object that every block holds (stored once). ``save`` writes the shared folder format of
``plmkit.saving`` with the handle's tensors under its ``prefix`` and the head under ``head.``.
Subclasses set ``format`` / ``prefix`` and describe themselves in ``meta()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from plmkit.backbones import backbone_signature
from plmkit.saving import check_tensors, head_state, write_module_folder
from plmkit.sites import remove_block


class Handle:
    """What an ``attach_*`` call added to a model: list, save, load and detach it."""

    format: ClassVar[str] = "plmkit-module"
    """The ``format`` written into ``config.json``."""
    prefix: ClassVar[str] = "module"
    """The tensor-group prefix in ``weights.safetensors``."""

    def __init__(self, model: nn.Module, sites: list, blocks: list[nn.Module], frozen: list[nn.Parameter]) -> None:
        self.model = model
        self.sites = sites
        self.blocks = nn.ModuleList(blocks)
        self._frozen = frozen

    # ---------------------------------------------------------------------------- parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The added parameters that train (de-duplicated: a shared parameter appears once)."""
        return [p for p in self.blocks.parameters() if p.requires_grad]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def _shared_names(self) -> set[str]:
        """Parameter names that are one object in every block (only detectable with 2+ blocks)."""
        if len(self.blocks) < 2:
            return set()
        first = dict(self.blocks[0].named_parameters())
        return {name for name, param in first.items()
                if all(dict(b.named_parameters()).get(name) is param for b in self.blocks[1:])}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``layers.<i>.<name>`` per block; a parameter every block shares once, as ``shared.<name>``."""
        shared = self._shared_names()
        state = {f"shared.{name}": self.blocks[0].state_dict()[name].detach() for name in sorted(shared)}
        for index, block in enumerate(self.blocks):
            for name, tensor in block.state_dict().items():
                if name not in shared:
                    state[f"layers.{index}.{name}"] = tensor.detach()
        return state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "saved tensors") -> None:
        """Load tensors keyed as ``state_dict`` writes them; wrong names or shapes name ``source``."""
        tensors = self._expand_shared(tensors)
        expected = {k: v for k, v in self.state_dict().items() if not k.startswith("shared.")}
        expected.update(self._expand_shared({k: v for k, v in self.state_dict().items() if k.startswith("shared.")}))
        check_tensors(expected, tensors, source)
        with torch.no_grad():
            for index, block in enumerate(self.blocks):
                prefix = f"layers.{index}."
                own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                for name, target in block.state_dict(keep_vars=True).items():
                    target.copy_(own[name].to(device=target.device, dtype=target.dtype))

    def _expand_shared(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``shared.<name>`` -> ``layers.<i>.<name>`` for every block (the same tensor each time)."""
        out = {k: v for k, v in tensors.items() if not k.startswith("shared.")}
        for key, value in tensors.items():
            if key.startswith("shared."):
                for index in range(len(self.blocks)):
                    out[f"layers.{index}.{key.removeprefix('shared.')}"] = value
        return out

    # ---------------------------------------------------------------------------- lifecycle
    def detach(self) -> None:
        """Remove the blocks and unfreeze what the attach call froze."""
        for site in self.sites:
            remove_block(site)
        for param in self._frozen:
            param.requires_grad_(True)
        self.sites = []

    def meta(self) -> dict[str, Any]:
        """What ``config.json`` needs to rebuild this handle (besides backbone and head)."""
        return {}

    def save(self, path: str | Path, head: nn.Module | None = None, backbone_name: str = "",
             extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` (this handle's tensors and the head) atomically."""
        head_tensors, head_config = head_state(head)
        meta = {**self.meta(), "backbone": backbone_signature(self.model, backbone_name), "head": head_config,
                **(extra or {})}
        return write_module_folder(path, self.format, {self.prefix: self.state_dict(), "head": head_tensors}, meta)
