"""Build an ODE encoder from a pretrained post-LN encoder, and save / reload it with any step count.

Weight mapping (see :mod:`plmkit.compress.ode` for why): for block i replacing layers G_i,

    query/key/value/out, ffn_in/ffn_out  <- mean over l in G_i of layer l's attention / feed-forward linears
    attn_norm                            <- mean over l in G_i of the norm feeding layer l
                                            (layer l-1's output norm; the embeddings' norm for l = 0)
    ffn_norm                             <- mean over l in G_i of layer l's attention-output norm
    final_norm                           <- the last layer's output norm

With ``form='postnorm'`` (the layer itself is the step, F(h) = Phi(h) - h) the norms are the layer's own:
``attn_norm`` <- its attention-output norm LN_a, ``ffn_norm`` <- its output norm LN_f, and there is no final
norm; with k = T blocks the model is the source encoder exactly.

``init='layer'`` copies one source layer per block instead of a mean: ``init_layer`` names one layer for
every block ('2') or one per block ('0,2,4'); ``init='random'`` keeps
the fresh initialisation (a model from scratch, e.g. in tests). The embeddings are copied.

``init='mpo'`` takes each of a block's six linears from the MPO shared-centre fit of its group
(``compress.mpo_share.fit_shared_mpo``, the fit behind ``mpo-deep``): the group's matrices W_l
(l in G_i) are fitted as W_l ~ L_l C R_l with one central tensor C and per-layer auxiliary cores;
each layer becomes an ``MPOLinear`` whose centre is the one shared parameter
(``MPOLinear.share_central``), and the block's weight is the mean of their reconstructions,

    W_block = (1 / |G_i|) sum_{l in G_i} contract(aux_l[:c], C, aux_l[c:])

(biases and norms as for ``average``). With full bonds this differs from the plain mean only through
the fit's error; with ``mpo_bond`` capping C's bonds, only what the layers share through the centre
survives, a filtered average.

A saved model is ``config.json`` + ``weights.safetensors`` (plus the tokenizer): the ODE config, the
source's Hugging Face config (to rebuild the embeddings) and the head config; ``load_ode_model`` takes
any step count and solver.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import locate
from plmkit.compress.mpo import factorize
from plmkit.compress.mpo_depth import layer_groups
from plmkit.compress.mpo_linear import MPOLinear
from plmkit.compress.mpo_share import fit_shared_mpo
from plmkit.compress.ode import ODEClassifier, ODEConfig, ODEEncoder
from plmkit.errors import ConfigError
from plmkit.models import ClassificationHead, HeadConfig
from plmkit.saving import check_tensors, read_module_folder, write_module_folder

logger = logging.getLogger("plmkit")

FORMAT = "plmkit-ode"
BERT_STYLE = ("bert", "roberta", "xlm-roberta")
LINEARS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
           "out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}


def _sizes(config: Any) -> dict[str, Any]:
    return {"hidden": config.hidden_size, "heads": config.num_attention_heads,
            "intermediate": config.intermediate_size, "activation": config.hidden_act,
            "eps": config.layer_norm_eps, "dropout": config.hidden_dropout_prob}


def _mean_into(target: nn.Module, sources: list[nn.Module]) -> None:
    with torch.no_grad():
        for name, param in target.named_parameters():
            param.copy_(torch.stack([dict(s.named_parameters())[name].detach() for s in sources]).mean(0))


def mpo_shared_weight(linears: list[nn.Linear], max_bond: int | None = None, num_cores: int = 5,
                      iterations: int = 10) -> tuple[torch.Tensor, list[float]]:
    """Mean of the linears' reconstructions from one shared-centre MPO fit: (out, in) weight, fit errors.

    Each linear becomes an ``MPOLinear`` (its own auxiliary cores, bias dropped) whose central tensor is
    the one shared ``nn.Parameter`` (``share_central``); the result is the mean of their ``W`` (in, out),
    transposed to ``nn.Linear``'s (out, in).
    """
    weights = [linear.weight.detach().T for linear in linears]  # (in, out) each
    in_f, out_f = factorize(weights[0].shape[0], num_cores), factorize(weights[0].shape[1], num_cores)
    fit = fit_shared_mpo(weights, in_f, out_f, max_bond)
    dtype = linears[0].weight.dtype
    central = nn.Parameter(fit.central.to(dtype))
    c = len(in_f) // 2
    rebuilt = []
    for aux in fit.auxiliary:
        cores = aux[:c] + [fit.central] + aux[c:]
        ranks = [1] + [int(core.shape[-1]) for core in cores[:-1]] + [1]
        layer = MPOLinear(in_f, out_f, ranks, bias=False, dtype=dtype)
        with torch.no_grad():
            for k, (param, core) in enumerate(zip(layer.cores, cores, strict=True)):
                if k != c:
                    param.copy_(core)
        layer.share_central(central)
        with torch.no_grad():
            rebuilt.append(layer.weight_matrix())  # (in, out)
    return torch.stack(rebuilt).mean(0).T.contiguous(), fit.relative_errors


def _init_blocks(encoder: ODEEncoder, base: nn.Module, layers: nn.ModuleList, config: ODEConfig) -> None:
    feeding = [base.embeddings.LayerNorm] + [layer.output.LayerNorm for layer in layers[:-1]]
    groups = layer_groups(len(layers), config.num_blocks)
    errors: dict[str, list[float]] = {}
    for i, (block, group) in enumerate(zip(encoder.blocks, groups, strict=True)):
        chosen = [config.block_layers()[i]] if config.init == "layer" else group
        for name, path in LINEARS.items():
            _mean_into(getattr(block, name), [layers[i].get_submodule(path) for i in chosen])
            if config.init == "mpo":
                weight, fit_errors = mpo_shared_weight([layers[i].get_submodule(path) for i in chosen],
                                                       config.mpo_bond, config.mpo_cores)
                with torch.no_grad():
                    getattr(block, name).weight.copy_(weight)
                errors.setdefault(name, []).extend(fit_errors)
        if config.form == "postnorm":  # the layer's own norms, where they are
            _mean_into(block.attn_norm, [layers[i].attention.output.LayerNorm for i in chosen])
            _mean_into(block.ffn_norm, [layers[i].output.LayerNorm for i in chosen])
        else:
            _mean_into(block.attn_norm, [feeding[i] for i in chosen])
            _mean_into(block.ffn_norm, [layers[i].attention.output.LayerNorm for i in chosen])
    if config.form == "prenorm":
        _mean_into(encoder.final_norm, [layers[-1].output.LayerNorm])
    if errors:
        logger.info("MPO shared-centre fit, mean relative error per linear: %s",
                    {name: round(sum(e) / len(e), 4) for name, e in errors.items()})


def build_ode_encoder(source: nn.Module, config: ODEConfig) -> ODEEncoder:
    """A shared-layer encoder whose embeddings and blocks come from ``source`` (a BERT-style encoder)."""
    found = locate(source)
    base, layers = found.base, found.layers
    if found.anatomy.model_type not in BERT_STYLE:
        raise ConfigError(f"ODE encoders are built from {BERT_STYLE} layers; {found.anatomy.model_type!r} "
                          "has another layer layout")
    config = replace(config, depth=config.depth or len(layers), extra={})
    if config.init == "layer" and max(config.block_layers()) >= len(layers):
        raise ConfigError(f"--init-layer {config.init_layer} is out of range: the source has layers 0..{len(layers) - 1}")
    if config.init in ("average", "mpo") and config.num_blocks > len(layers):
        raise ConfigError(f"--num-blocks {config.num_blocks} exceeds the source's {len(layers)} layers; "
                          "use at most that many blocks or --init layer / random")
    sizes = _sizes(base.config)
    config.extra = {"backbone_config": base.config.to_dict(), **sizes}
    encoder = ODEEncoder(copy.deepcopy(base.embeddings), config, token_type_ids=found.anatomy.token_type_ids,
                         **sizes)
    if config.init != "random":
        _init_blocks(encoder, base, layers, config)
    return encoder


def _rebuild_embeddings(backbone_config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    values = {k: v for k, v in backbone_config.items() if k not in ("model_type", "transformers_version")}
    config = AutoConfig.for_model(backbone_config["model_type"], **values)
    return AutoModel.from_config(config).embeddings


def save_ode_model(path: str | Path, model: ODEClassifier, tokenizer: Any = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and its tokenizer, when given) as a plmkit ODE folder."""
    meta = {"ode": asdict(model.encoder.config), "head": model.head.config.to_dict(),
            "takes_token_types": model.encoder.takes_token_types, **(extra or {})}
    path = write_module_folder(path, FORMAT, {"model": model.state_dict()}, meta)
    if tokenizer is not None:
        tokenizer.save_pretrained(Path(path) / "tokenizer")
    return Path(path)


@dataclass
class LoadedODEModel:
    model: ODEClassifier
    tokenizer: Any
    meta: dict[str, Any]


def load_ode_model(path: str | Path, steps: int | None = None, solver: str | None = None) -> LoadedODEModel:
    """Rebuild a saved ODE classifier, set to ``steps`` with ``solver`` (defaults: as saved)."""
    meta, groups = read_module_folder(path, FORMAT, "ODE model")
    config = ODEConfig(**meta["ode"])
    sizes = {k: config.extra[k] for k in ("hidden", "heads", "intermediate", "activation", "eps", "dropout")}
    encoder = ODEEncoder(_rebuild_embeddings(config.extra["backbone_config"]), config,
                         token_type_ids=meta["takes_token_types"], **sizes)
    model = ODEClassifier(encoder, ClassificationHead(HeadConfig(**meta["head"])))
    tensors = groups.get("model", {})
    check_tensors(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors)
    model.eval().set_steps(steps or config.steps, solver)
    tokenizer = None
    if (Path(path) / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(path) / "tokenizer")
    return LoadedODEModel(model, tokenizer, meta)
