"""The folder format every saved module shares: ``config.json`` + ``weights.safetensors``.

Tensors are grouped by prefix (``adapter.``, ``transfer.``, ``head.``) so one file holds a module
and its task head; ``config.json`` names the format, so loading the wrong kind of folder is a clear
error instead of a key mismatch deep inside torch. Writes go through a temporary folder and a rename.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import PlmkitError
from plmkit.io import atomic_directory, atomic_write_json, save_tensors_atomic

CONFIG, WEIGHTS = "config.json", "weights.safetensors"


class ModuleFolderError(PlmkitError):
    """A folder that is not the saved module it was expected to be."""


def head_state(head: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A head's tensors and its config (when it has one), for saving beside a module."""
    if head is None:
        return {}, None
    config = head.config.to_dict() if hasattr(head, "config") else None
    return head.state_dict(), config


def write_module_folder(path: str | Path, format_name: str, groups: dict[str, dict[str, torch.Tensor]],
                        meta: dict[str, Any]) -> Path:
    tensors = {f"{group}.{key}": value.detach().float().cpu()
               for group, values in groups.items() for key, value in values.items()}
    with atomic_directory(path) as tmp:
        save_tensors_atomic(tensors, tmp / WEIGHTS)
        atomic_write_json(tmp / CONFIG, {"format": format_name, "format_version": 1, **meta})
    return Path(path)


def read_module_config(path: str | Path, format_name: str, what: str) -> dict[str, Any]:
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ModuleFolderError(f"{path} is not a saved {what} (needs {CONFIG} and {WEIGHTS})")
    meta = json.loads((path / CONFIG).read_text())
    if meta.get("format") != format_name:
        raise ModuleFolderError(f"{path / CONFIG} is not a plmkit {what} (format {meta.get('format')!r})")
    return meta


def read_module_folder(path: str | Path, format_name: str, what: str
                       ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(config, tensors grouped by prefix)."""
    from safetensors.torch import load_file

    meta = read_module_config(path, format_name, what)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(Path(path) / WEIGHTS)).items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    return meta, groups
