"""MPO depth scaling (MPOBERT-style): a deeper encoder from a pretrained one, at a similar size.

Every linear layer of the L pretrained layers becomes an MPO. Within each group of pretrained
layers (``num_groups`` = 1: all layers, MPOBERT) the matrices of one kind (query, key, ...) share
one central tensor, fitted by ``fit_shared_mpo``; auxiliary tensors stay per layer, and each layer
gets a rank-r low-rank adapter (zero-initialised). The deep model has k·L layers: pretrained layer l
becomes a block of k layers, the layer itself followed by k-1 new copies whose auxiliary tensors
are scaled by s = (2L)^(-1/4) (so each copied weight is scaled by s^4 = 1/(2L) with 4 auxiliary tensors),
as are the biases that feed the residual stream.

Starting close to the shallow model. A post-LN layer is LN_f(h + F(h)) with h = LN_a(x + A(x)).
A copy whose branches A, F are scaled towards zero is LN_f(LN_a(x)), and that is the identity only
when x is already standardised and the LayerNorms have unit scale and zero shift. So with
``layernorm_handoff`` each block is rewired: its first layer's final LayerNorm and the copies'
LayerNorms get unit scale / zero shift, and the block's last layer carries the pretrained final
LayerNorm affine. Then, in eval mode, deep(x) = shallow(x) exactly at s = 0 (up to LayerNorm epsilon),
and the gap grows like s^4 (the branch outputs are proportional to s^4 to first order).
"shallow" is the same construction with k = 1: the pretrained model itself when nothing is shared
(num_groups = L, full bonds), else the shared-centre L-layer model.

The residual linears and the two LayerNorms of each layer come from ``plmkit.anatomy``. The hand-off
is a post-LN argument: pre-LN decoders (Llama, GPT-2) are refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import ENCODER_TYPES, Anatomy, locate
from plmkit.compress.mpo import factorize
from plmkit.compress.mpo_linear import MPOLinear
from plmkit.compress.mpo_model import encoder_root
from plmkit.compress.mpo_share import SharedFit, fit_shared_mpo
from plmkit.errors import ConfigError
from plmkit.inject import input_output_weight, is_linear, set_module

DEEP_TRAINABLE = ("all", "auxiliary")


@dataclass
class DeepMPOConfig:
    """How to grow the encoder: depth, sharing, adapters and the initial scaling of new layers."""

    depth_multiplier: int = 2
    """The deep model has depth_multiplier x L layers (each pretrained layer followed by its copies)."""
    num_groups: int = 1
    """Contiguous groups of pretrained layers; each group shares one central tensor per weight kind (1 = all)."""
    adapter_rank: int = 8
    """Rank of the per-layer low-rank adapter on every MPO linear layer (0 = none)."""
    aux_scale: float | None = None
    """Factor on each auxiliary tensor of a new layer; None = (2L)^(-1/4), L = pretrained depth."""
    layernorm_handoff: bool = True
    """Rewire LayerNorms so each block of copies starts as its pretrained layer (see the module doc)."""
    max_bond: int | None = None
    """Cap the two bonds of the central tensors (default: full, so only sharing loses information)."""
    fit_iterations: int = 10
    """Alternating refinements of each shared central tensor."""
    num_cores: int = 5
    """Cores per matrix; the middle one is shared."""
    trainable: str = "all"
    """'all', or 'auxiliary': auxiliary tensors, adapters and the head only (central tensors frozen)."""

    def __post_init__(self) -> None:
        for name in ("depth_multiplier", "num_groups", "fit_iterations"):
            if getattr(self, name) < 1 and not (name == "fit_iterations" and getattr(self, name) == 0):
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.adapter_rank < 0:
            raise ConfigError(f"adapter_rank must be >= 0, got {self.adapter_rank}")
        if self.aux_scale is not None and self.aux_scale < 0:
            raise ConfigError(f"aux_scale must be >= 0, got {self.aux_scale}")
        if self.max_bond is not None and self.max_bond < 1:
            raise ConfigError(f"max_bond must be >= 1, got {self.max_bond}")
        if self.num_cores < 3:
            raise ConfigError(f"num_cores must be >= 3 (auxiliary tensors on both sides), got {self.num_cores}")
        if self.trainable not in DEEP_TRAINABLE:
            raise ConfigError(f"trainable must be one of {DEEP_TRAINABLE}, got {self.trainable!r}")

    def scale(self, pretrained_layers: int) -> float:
        return self.aux_scale if self.aux_scale is not None else (2 * pretrained_layers) ** -0.25


@dataclass
class DeepModel:
    model: nn.Module
    """The deep encoder (same class as the pretrained one, k x L layers of MPOLinear)."""
    report: dict[str, Any] = field(default_factory=dict)


def layer_groups(num_layers: int, num_groups: int) -> list[list[int]]:
    """Split layers 0..L-1 into ``num_groups`` contiguous groups of near-equal size."""
    if not 1 <= num_groups <= num_layers:
        raise ConfigError(f"num_groups must be between 1 and the {num_layers} pretrained layers, got {num_groups}")
    bounds = [g * num_layers // num_groups for g in range(num_groups + 1)]
    return [list(range(bounds[g], bounds[g + 1])) for g in range(num_groups)]


def _fit_groups(layers: nn.ModuleList, groups: list[list[int]], kinds: list[str], config: DeepMPOConfig):
    """{(group, kind): (SharedFit, factors)} for every weight kind of every group."""
    fits = {}
    for g, members in enumerate(groups):
        for kind in kinds:
            weights = [input_output_weight(layers[i].get_submodule(kind)).detach() for i in members]  # (in, out)
            in_f = factorize(weights[0].shape[0], config.num_cores)
            out_f = factorize(weights[0].shape[1], config.num_cores)
            fits[g, kind] = (fit_shared_mpo(weights, in_f, out_f, config.max_bond, config.fit_iterations), in_f, out_f)
    return fits


def _mpo_layer(linear: nn.Linear, fit: SharedFit, index: int, factors, central: nn.Parameter,
               scale: float, bias_scale: float, adapter_rank: int) -> MPOLinear:
    in_f, out_f = factors
    c = len(in_f) // 2
    aux = fit.auxiliary[index]
    cores = aux[:c] + [fit.central] + aux[c:]
    ranks = [1] + [int(core.shape[-1]) for core in cores[:-1]] + [1]
    layer = MPOLinear(in_f, out_f, ranks, bias=linear.bias is not None, adapter_rank=adapter_rank,
                      dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        for k, (param, core) in enumerate(zip(layer.cores, cores, strict=True)):
            if k != c:
                param.copy_(core * scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias * bias_scale)
    layer.share_central(central)
    return layer


def _reset_norm(norm: nn.Module) -> None:
    with torch.no_grad():
        norm.weight.fill_(1.0)
        norm.bias.zero_()


def _block(layer: nn.Module, copy_index: int, copies: int, anatomy: Anatomy, config: DeepMPOConfig) -> None:
    """Apply the LayerNorm hand-off to one layer of a block (see the module doc)."""
    if copies == 1 or not config.layernorm_handoff:
        return
    attention_norm, final_norm = (layer.get_submodule(n) for n in anatomy.norms)
    if copy_index > 0:
        _reset_norm(attention_norm)
    if copy_index < copies - 1:
        _reset_norm(final_norm)


def build_deep_mpo(encoder: nn.Module, config: DeepMPOConfig | None = None) -> DeepModel:
    """A deep copy of ``encoder`` with k x L MPO layers sharing central tensors (the input is untouched)."""
    config = config or DeepMPOConfig()
    anatomy = locate(encoder).anatomy
    if anatomy.kind != "encoder":
        raise ConfigError(f"depth scaling supports post-LN encoders ({', '.join(ENCODER_TYPES)}), not the "
                          f"{anatomy.model_type!r} decoder: its LayerNorm hand-off assumes LN(x + branch) layers; "
                          "compress a decoder with attach_mpo instead")
    layers = locate(encoder).layers
    groups = layer_groups(len(layers), config.num_groups)
    kinds = [n for n, m in layers[0].named_modules() if is_linear(m)]
    fits = _fit_groups(layers, groups, kinds, config)
    centrals = {key: nn.Parameter(fit.central.to(layers[0].get_submodule(key[1]).weight.dtype))
                for key, (fit, _, _) in fits.items()}
    k, scale = config.depth_multiplier, config.scale(len(layers))
    residual = anatomy.residual_linears
    deep_layers = []
    for g, members in enumerate(groups):
        for index, source in enumerate(members):
            for copy_index in range(k):
                layer = copy.deepcopy(layers[source])
                s = 1.0 if copy_index == 0 else scale
                for kind in kinds:
                    fit, in_f, out_f = fits[g, kind]
                    bias_scale = s ** (len(in_f) - 1) if kind in residual else 1.0
                    set_module(layer, kind, _mpo_layer(layer.get_submodule(kind), fit, index, (in_f, out_f),
                                                       centrals[g, kind], s, bias_scale, config.adapter_rank))
                _block(layer, copy_index, k, anatomy, config)
                deep_layers.append(layer)
    deep = _with_layers(encoder, deep_layers)
    set_deep_trainable(deep, config.trainable)
    return DeepModel(deep, _report(encoder, deep, fits, groups, config, scale))


def _with_layers(encoder: nn.Module, deep_layers: list[nn.Module]) -> nn.Module:
    """Copy ``encoder`` without its layers, then give it ``deep_layers`` and the new depth."""
    found = locate(encoder)
    path, original = found.layers_path, found.layers
    set_module(encoder, path, nn.ModuleList())
    try:
        deep = copy.deepcopy(encoder)
    finally:
        set_module(encoder, path, original)
    set_module(deep, path, nn.ModuleList(deep_layers))
    setattr(locate(deep).base.config, found.anatomy.depth_attr, len(deep_layers))
    return deep


def set_deep_trainable(model: nn.Module, trainable: str) -> None:
    """'all' or 'auxiliary' (auxiliary cores + adapters; the caller's head trains as it likes)."""
    if trainable not in DEEP_TRAINABLE:
        raise ConfigError(f"trainable must be one of {DEEP_TRAINABLE}, got {trainable!r}")
    for param in model.parameters():
        param.requires_grad_(trainable == "all")
    if trainable == "auxiliary":
        for module in model.modules():
            if isinstance(module, MPOLinear):
                module.set_trainable("auxiliary")


def _report(shallow: nn.Module, deep: nn.Module, fits, groups, config: DeepMPOConfig, scale: float) -> dict[str, Any]:
    def count(model: nn.Module) -> dict[str, int]:
        return {"total": sum(p.numel() for p in model.parameters()),
                "encoder": sum(p.numel() for p in encoder_root(model).parameters())}

    errors = [e for fit, _, _ in fits.values() for e in fit.relative_errors]
    return {
        "pretrained_layers": sum(len(g) for g in groups), "deep_layers": len(locate(deep).layers),
        "groups": groups, "aux_scale": scale, "weight_scale": scale ** (config.num_cores - 1),
        "shallow_parameters": count(shallow), "deep_parameters": count(deep),
        "central_parameters": sum(fit.central.numel() for fit, _, _ in fits.values()),
        "sharing_error": {"mean": sum(errors) / len(errors), "max": max(errors)},
        "sharing_error_by_kind": {f"group{g}.{kind}": fit.relative_errors for (g, kind), (fit, _, _) in fits.items()},
    }


@torch.no_grad()
def hidden_deviation(model: nn.Module, reference: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """||h - h_ref||_F / ||h_ref||_F over the real tokens of ``batch`` (last hidden states, eval mode)."""
    states = []
    for m in (model, reference):
        was = m.training
        m.eval()
        states.append(m(**batch).last_hidden_state)
        m.train(was)
    mask = batch["attention_mask"].bool()
    diff, ref = states[0][mask] - states[1][mask], states[1][mask]
    return float(diff.norm() / ref.norm().clamp_min(1e-30))
