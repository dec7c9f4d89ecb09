"""Find the linear layers of a model and swap sub-modules by dotted name.

``find_linear_targets`` lists the dense projections of a model: by default every linear layer inside
the transformer layer list that ``plmkit.anatomy`` names (BERT ``encoder.layer.N.``, Llama
``layers.N.``, GPT-2 ``h.N.`` ...), narrowed or widened by regular expressions on module names.
GPT-2 keeps its projections in ``transformers.pytorch_utils.Conv1D``, whose weight is stored
(in, out) where ``nn.Linear`` stores (out, in); ``input_output_weight`` gives both as W (in, out)
with y = x W + b.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from plmkit.anatomy import locate
from plmkit.errors import ConfigError


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a GPT-2 ``Conv1D`` (the same map with the weight stored transposed)."""
    conv1d = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def input_output_weight(module: nn.Module) -> torch.Tensor:
    """W (in, out) with y = x W + b, for an ``nn.Linear`` (weight^T) or a ``Conv1D`` (weight as stored)."""
    if isinstance(module, nn.Linear):
        return module.weight.T
    if is_linear(module):
        return module.weight
    raise ConfigError(f"{type(module).__name__} is not a linear layer")


def compile_pattern(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"{what} {pattern!r} is not a valid regular expression: {error}") from error


def find_linear_targets(model: nn.Module, include: str | None = None,
                        exclude: str | None = None) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of every linear layer to act on, in ``named_modules`` order.

    ``include`` (a regular expression searched in module names) replaces the default, which is every
    linear layer inside the anatomy's layer list; ``exclude`` then drops names it matches.
    """
    include_re, exclude_re = compile_pattern(include, "include"), compile_pattern(exclude, "exclude")
    if include_re is None:
        inside = locate(model).layers_path + "."

        def chosen(name: str) -> bool:
            return name.startswith(inside)
    else:
        def chosen(name: str) -> bool:
            return bool(include_re.search(name))
    linears = [(n, m) for n, m in model.named_modules() if is_linear(m)]
    found = [(n, m) for n, m in linears if chosen(n) and not (exclude_re and exclude_re.search(n))]
    if not found:
        names = ", ".join(n for n, _ in linears[:6]) or "(none)"
        raise ConfigError(f"no linear layer name matches include={include!r} exclude={exclude!r}; linear layers "
                          f"are named like {names}")
    return found


def replace_modules(model: nn.Module, targets: list[str] | list[tuple[str, nn.Module]],
                    factory: Callable[[str, nn.Module], nn.Module]) -> dict[str, nn.Module]:
    """Swap each named sub-module for ``factory(name, old)``, in place; returns {name: new module}."""
    names = [t if isinstance(t, str) else t[0] for t in targets]
    replaced = {}
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError as error:
            raise ConfigError(f"{type(model).__name__} has no sub-module {name!r}") from error
        replaced[name] = factory(name, old)
        set_module(model, name, replaced[name])
    return replaced


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """``model.<name> = module`` for a dotted ``name`` (list indices included)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
