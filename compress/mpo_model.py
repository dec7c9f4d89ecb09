"""MPO compression of a Hugging Face encoder or decoder: choose layers, meet a parameter budget, freeze.

``attach_mpo(model, MPOConfig(budget=0.5))`` decomposes every linear layer inside the transformer
layers (found through ``plmkit.anatomy``: BERT ``encoder.layer.N.``, Llama ``layers.N.``, GPT-2
``h.N.``, whose ``Conv1D`` stores W = (in, out) as is) into a canonical MPO, picks bond dimensions so
that the layer stack keeps ``budget`` of its parameters, and
swaps in ``MPOLinear`` modules. The budget is spent by one greedy pass over all matrices at once:
each step cuts the central-tensor bond (of any matrix) that adds the least *relative* squared error
(sigma^2 / ||W||^2) per parameter saved, with exactly known errors (``mpo_budget``), so matrices
that compress well give more. Fine-tuning then updates only the
auxiliary tensors (MPOP) or everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import locate
from plmkit.compress.mpo import MPO, full_ranks, mpo_decompose, truncate
from plmkit.compress.mpo_budget import shrink
from plmkit.compress.mpo_linear import FORWARD_MODES, MPOLinear
from plmkit.errors import ConfigError
from plmkit.handles import Handle
from plmkit.inject import compile_pattern, find_linear_targets, input_output_weight, set_module

__all__ = ["MPOConfig", "MPOHandle", "attach_mpo", "count_parameters", "encoder_root", "find_targets",
           "merge_in_place", "mpo_layers", "relative_errors", "set_module", "to_dense"]

ALLOCATIONS = ("global", "uniform")
TRAINABLE = ("auxiliary", "all", "none")


@dataclass
class MPOConfig:
    """How to compress: which layers, how much, and what fine-tuning may change."""

    budget: float | None = 0.5
    """Keep this fraction of the encoder's parameters (decomposed weights shrink; the rest is kept)."""
    max_error: float | None = None
    """Instead of a budget: the largest relative error ||W - W_hat||_F / ||W||_F of each matrix."""
    max_bond: int | None = None
    """Instead of a budget: cap every bond dimension."""
    targets: str | None = None
    """Regular expression searched in module names; every matching linear layer is decomposed
    (default: every linear layer inside the transformer layers)."""
    num_cores: int = 5
    """Cores per matrix; the middle one is the central tensor."""
    allocation: str = "global"
    """'global': one greedy over all matrices by relative error per parameter; 'uniform': same fraction each."""
    factors: str | None = None
    """Factor shapes by size, e.g. '384=2x4x4x4x3,1536=4x4x6x4x4' (default: chosen automatically)."""
    forward_mode: str = "auto"
    """MPOLinear forward path: 'auto' (cost model), 'dense' (rebuild W) or 'factored' (contract cores)."""
    trainable: str = "all"
    """What fine-tuning updates: 'all', 'auxiliary' (auxiliary tensors + head: MPOP light tuning) or 'none'."""

    def __post_init__(self) -> None:
        chosen = [n for n in ("budget", "max_error", "max_bond") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"set only one of budget, max_error and max_bond (got {', '.join(chosen)}); "
                             "pass --budget none to use another")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        if self.max_error is not None and self.max_error < 0:
            raise ConfigError(f"max_error must be >= 0, got {self.max_error}")
        if self.max_bond is not None and self.max_bond < 1:
            raise ConfigError(f"max_bond must be >= 1, got {self.max_bond}")
        if self.num_cores < 2:
            raise ConfigError(f"num_cores must be >= 2, got {self.num_cores}")
        for name, allowed in (("allocation", ALLOCATIONS), ("forward_mode", FORWARD_MODES),
                              ("trainable", TRAINABLE)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        compile_pattern(self.targets, "targets")
        self.factor_table()

    def factor_table(self) -> dict[int, tuple[int, ...]]:
        """Parse ``factors`` ('384=2x4x4x4x3,...') into {size: factors}."""
        table: dict[int, tuple[int, ...]] = {}
        for item in filter(None, (self.factors or "").split(",")):
            size, _, shape = item.strip().partition("=")
            try:
                parsed = tuple(int(f) for f in shape.lower().split("x"))
                size_value = int(size)
            except ValueError:
                raise ConfigError(f"bad factors entry {item!r}; write SIZE=AxBxC..., e.g. 384=2x4x4x4x3") from None
            if math.prod(parsed) != size_value or len(parsed) != self.num_cores:
                raise ConfigError(f"factors entry {item!r}: need {self.num_cores} factors whose product is {size_value}")
            table[size_value] = parsed
        return table


# ------------------------------------------------------------------------------ targets
def encoder_root(model: nn.Module) -> nn.Module:
    """The module holding the transformer layers whose parameters a budget counts (the anatomy's stack)."""
    return locate(model).stack


def find_targets(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Module]]:
    """The linear layers to decompose (``plmkit.inject.find_linear_targets`` with ``include=pattern``)."""
    return find_linear_targets(model, include=pattern)


def to_dense(layer: MPOLinear) -> nn.Module:
    """The dense layer an MPOLinear stands for: ``nn.Linear``, or GPT-2's ``Conv1D`` (weight (in, out))."""
    linear = layer.to_linear()
    if layer.dense_layout != "conv1d":
        return linear
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(layer.out_features, layer.in_features).to(linear.weight)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)  # (out, in) -> (in, out)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
        else:
            conv.bias.zero_()
    return conv


# ------------------------------------------------------------------------------ size rules
def _compress(mpos: list[MPO], norms: list[float], config: MPOConfig, cores_budget: int | None) -> list[MPO]:
    """Truncate each exact MPO by the configured rule (bond cap, relative error, or shared budget)."""
    if config.max_bond is not None:
        return [truncate(m, [min(config.max_bond, f) for f in full_ranks(m.in_factors, m.out_factors)]) for m in mpos]
    if config.max_error is not None:
        return [shrink([m], max_error_sq=[(config.max_error * w) ** 2])[0] for m, w in zip(mpos, norms, strict=True)]
    if cores_budget is None:
        return mpos
    if config.allocation == "global":
        return shrink(mpos, scales=[1.0 / max(w * w, 1e-30) for w in norms], budget=cores_budget)
    sizes = [math.prod(m.shape) for m in mpos]
    return [shrink([m], budget=int(cores_budget * s / sum(sizes)))[0] for m, s in zip(mpos, sizes, strict=True)]


def _cores_budget(model: nn.Module, targets: list[tuple[str, nn.Module]], budget: float) -> tuple[int, int]:
    """(parameters the MPO cores may use, encoder parameters) so that the encoder keeps ``budget``."""
    root = encoder_root(model)
    inside = {id(m) for m in root.modules()}
    outside = [n for n, m in targets if id(m) not in inside]
    if outside:
        raise ConfigError(f"a budget is a fraction of the encoder's parameters, but {outside[0]} lies outside the "
                         "transformer layers; narrow --targets or use --max-error / --max-bond")
    encoder_params = sum(p.numel() for p in root.parameters())
    weights = sum(m.weight.numel() for _, m in targets)
    cores = int(budget * encoder_params) - (encoder_params - weights)
    if cores <= 0:
        raise ConfigError(f"a budget of {budget:.0%} cannot be met: the parameters that are not decomposed already "
                         f"take {(encoder_params - weights) / encoder_params:.0%} of the encoder")
    return cores, encoder_params


# ------------------------------------------------------------------------------ attach
class MPOHandle(Handle):
    """What ``attach_mpo`` did: the new layers, a per-layer report, freezing and merging.

    As every handle (``plmkit.handles.Handle``): its blocks are the ``MPOLinear`` layers (in target
    order), so ``state_dict`` / ``save`` hold their cores keyed ``layers.<i>.`` (a central tensor that
    several layers share is stored once as ``shared.``); ``detach`` merges them back into dense layers.
    The full model (backbone, head and tokenizer) is saved with ``compress.mpo_io.save_mpo_model``.
    """

    format, prefix = "plmkit-mpo-layers", "mpo"

    def __init__(self, model: nn.Module, config: MPOConfig, layers: dict[str, MPOLinear],
                 report: list[dict[str, Any]], encoder_params_before: int | None = None) -> None:
        super().__init__(model, sites=[], blocks=list(layers.values()), frozen=[])
        self.config = config
        self.layers = layers
        self.report = report
        self.encoder_params_before = encoder_params_before

    def num_parameters(self) -> int:
        return sum(layer.num_parameters() for layer in self.layers.values())

    def meta(self) -> dict[str, Any]:
        return {"mpo": asdict(self.config), "layers": list(self.layers), "report": self.report}

    def detach(self) -> None:
        """Replace the MPO layers by their dense equivalents (what ``merge`` does)."""
        self.merge()

    def set_trainable(self, trainable: str) -> None:
        """'auxiliary': only auxiliary tensors (the caller adds its head); 'all'; 'none'."""
        if trainable not in TRAINABLE:
            raise ConfigError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        for param in self.model.parameters():
            param.requires_grad_(trainable == "all")
        if trainable == "auxiliary":
            for layer in self.layers.values():
                layer.set_trainable("auxiliary")

    def merge(self) -> nn.Module:
        """Replace every MPOLinear by the equivalent dense nn.Linear, in place."""
        for name, layer in self.layers.items():
            set_module(self.model, name, to_dense(layer))
        self.layers, self.blocks = {}, nn.ModuleList()
        return self.model


def attach_mpo(model: nn.Module, config: MPOConfig | None = None) -> MPOHandle:
    """Decompose the target linear layers of ``model`` and swap in MPOLinear modules."""
    config = config or MPOConfig()
    targets = find_targets(model, config.targets)
    table = config.factor_table()
    mpos, norms = [], []
    for _, linear in targets:
        weight = input_output_weight(linear).detach()  # the MPO describes W = (in, out)
        mpos.append(mpo_decompose(weight, table.get(weight.shape[0]), table.get(weight.shape[1]),
                                  num_cores=config.num_cores))
        norms.append(float(weight.double().norm()))
    cores_budget, encoder_params = (None, None)
    if config.budget is not None:
        cores_budget, encoder_params = _cores_budget(model, targets, config.budget)
    layers, report = {}, []
    for (name, linear), cut, norm in zip(targets, _compress(mpos, norms, config, cores_budget), norms, strict=True):
        layer = MPOLinear.from_mpo(cut, linear.bias.detach() if linear.bias is not None else None,
                                   dtype=linear.weight.dtype, forward_mode=config.forward_mode)
        layer.dense_layout = "linear" if isinstance(linear, nn.Linear) else "conv1d"
        set_module(model, name, layer)
        layers[name] = layer
        report.append(_layer_report(name, linear, cut, norm))
    handle = MPOHandle(model, config, layers, report, encoder_params)
    handle.set_trainable(config.trainable)
    return handle


def _layer_report(name: str, linear: nn.Module, mpo: MPO, norm: float) -> dict[str, Any]:
    error = mpo.error()
    return {"name": name, "shape": list(mpo.shape),
            "in_factors": list(mpo.in_factors), "out_factors": list(mpo.out_factors), "ranks": mpo.ranks,
            "dense_parameters": linear.weight.numel(), "mpo_parameters": mpo.num_parameters(),
            "error": error, "relative_error": error / norm if norm else 0.0}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters of the whole model and of its transformer layers ('encoder'; shared tensors count once)."""
    root = encoder_root(model)
    return {"total": sum(p.numel() for p in model.parameters()),
            "encoder": sum(p.numel() for p in root.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def mpo_layers(model: nn.Module) -> dict[str, MPOLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MPOLinear)}


def merge_in_place(model: nn.Module) -> nn.Module:
    """Replace every MPOLinear in ``model`` by its dense nn.Linear."""
    for name, layer in mpo_layers(model).items():
        set_module(model, name, to_dense(layer))
    return model


def relative_errors(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """||W - W_hat|| / ||W|| of each MPOLinear in ``model`` against the same-named Linear in ``reference``."""
    errors = {}
    for name, layer in mpo_layers(model).items():
        dense = input_output_weight(reference.get_submodule(name)).T.detach().double()  # (out, in)
        with torch.no_grad():
            errors[name] = float((layer.merged_weight().double() - dense).norm() / dense.norm())
    return errors
