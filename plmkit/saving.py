"""The folder format every saved module shares: ``config.json`` + ``weights.safetensors``.

Tensors are grouped by prefix (``adapter.``, ``transfer.``, ``head.``) so one file holds a module
and its task head; ``config.json`` names the format, so loading the wrong kind of folder is a clear
error instead of a key mismatch deep inside torch. Writes go through a temporary folder and a rename.

Every way a folder can be unusable — a missing file, another format, unreadable JSON, a truncated
safetensors file, tensors whose names or shapes do not fit the saved config, a backbone of another
shape — raises a ``ModuleFolderError`` that names the folder and what to do about it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.backbones import backbone_signature
from plmkit.errors import PlmkitError
from plmkit.io import atomic_directory, atomic_write_json, save_tensors_atomic

CONFIG, WEIGHTS = "config.json", "weights.safetensors"
FORMAT_VERSION = 1


class ModuleFolderError(PlmkitError):
    """A folder that is not the saved module it was expected to be, or does not fit the backbone."""


class BackboneMismatchError(ModuleFolderError):
    """A saved module trained on a backbone of another architecture or shape."""


def head_state(head: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A head's tensors and its config (when it has one), for saving beside a module."""
    if head is None:
        return {}, None
    config = head.config.to_dict() if hasattr(head, "config") else None
    return head.state_dict(), config


def write_module_folder(path: str | Path, format_name: str, groups: dict[str, dict[str, torch.Tensor]],
                        meta: dict[str, Any]) -> Path:
    """Write ``groups`` (prefix -> tensors) and ``meta`` as one folder, atomically."""
    tensors = {f"{group}.{key}": value.detach().float().cpu()
               for group, values in groups.items() for key, value in values.items()}
    with atomic_directory(path) as tmp:
        save_tensors_atomic(tensors, tmp / WEIGHTS)
        atomic_write_json(tmp / CONFIG, {"format": format_name, "format_version": FORMAT_VERSION, **meta})
    return Path(path)


def _fix(what: str) -> str:
    return f"delete the folder and save or train the {what} again"


def read_module_config(path: str | Path, format_name: str, what: str) -> dict[str, Any]:
    """The folder's ``config.json``, checked to be a plmkit ``format_name`` folder."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ModuleFolderError(f"{path} is not a saved {what} (needs {CONFIG} and {WEIGHTS}); "
                                f"point to a folder written by plmkit, or {_fix(what)}")
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModuleFolderError(f"{path / CONFIG} is not valid JSON ({error}); {_fix(what)}") from error
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModuleFolderError(f"{path / CONFIG} is not a plmkit {what} (format {found!r}, "
                                f"expected {format_name!r}); point to a {what} folder")
    return meta


def read_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of ``<path>/weights.safetensors``; a damaged file is a ``ModuleFolderError``."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    try:
        return load_file(str(file))
    except Exception as error:  # safetensors raises its own error types (and OSError) on damage
        raise ModuleFolderError(f"{file} cannot be read ({type(error).__name__}: {error}); "
                                f"it is truncated or damaged: {_fix(what)}") from error


def read_module_folder(path: str | Path, format_name: str, what: str
                       ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """(config, tensors grouped by prefix)."""
    meta = read_module_config(path, format_name, what)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_weights(path, what).items():
        group, _, name = key.partition(".")
        groups.setdefault(group, {})[name] = value
    return meta, groups


def check_tensors(expected: dict[str, Any], found: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors whose names or shapes differ from ``expected`` (tensors or shapes by name)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    wrong = [f"{k}: saved {tuple(found[k].shape)}, config builds {shape}"
             for k, shape in shapes.items() if k in found and tuple(found[k].shape) != shape]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:4])}"] if unexpected else []) + wrong[:4]
        raise ModuleFolderError(f"{source}: the saved tensors do not fit its config ({'; '.join(parts)}); "
                                "the folder is damaged or was edited: delete it and save or train it again")


def check_backbone(meta: dict[str, Any], model: nn.Module, source: str, backbone_name: str = "") -> None:
    """Refuse a module trained on another architecture; warn when only the name differs."""
    saved, current = meta.get("backbone"), backbone_signature(model, backbone_name)
    if not isinstance(saved, dict) or any(key not in saved for key in ("model_type", "hidden_size", "num_layers")):
        raise ModuleFolderError(f"{source}: config.json does not record its backbone; "
                                "delete the folder and save or train it again")
    diffs = [f"{key}: saved {saved[key]!r}, this backbone {current[key]!r}"
             for key in ("model_type", "hidden_size", "num_layers") if saved[key] != current[key]]
    if diffs:
        raise BackboneMismatchError(
            f"{source} was trained on backbone {saved.get('name') or '?'} and does not fit this one ("
            + "; ".join(diffs) + "). Load it onto the backbone it was trained with, or retrain it."
        )
    if saved.get("name") and backbone_name and saved["name"] != backbone_name:
        warnings.warn(f"{source} was trained on {saved['name']!r}; loading onto {backbone_name!r} of the same shape",
                      stacklevel=2)
