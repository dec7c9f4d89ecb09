"""One table of model anatomy: where each supported model type keeps its layers, blocks and sizes.

Every row names module paths relative to the *base* model (what ``AutoModel`` returns: ``BertModel``,
``LlamaModel``, ``GPT2Model`` ...) and, inside one layer, relative to that layer. Everything in plmkit
that needs a layout (injection sites, linear targets, layer subsets, pooling, size signatures, MPO
compression) reads it here; nothing else hard-codes module paths.

Two layer families:

* post-LN encoders (BERT, RoBERTa, XLM-R, DistilBERT, MPNet): each sub-layer ends in
  ``LN(sublayer(x) + x)``; the feed-forward site is the module that applies that final LayerNorm
  ("bert" style) or the bare FFN whose LayerNorm the layer applies ("distilbert" style);
* pre-LN decoders (Llama, GPT-2): ``x + MLP(norm(x))``; the site is the MLP ("pre-ln" style) and the
  layer adds its own residual.

``locate(model)`` finds the base model inside a wrapper (``*ForCausalLM``, a ``SequenceClassifier``)
and returns its row with the dotted prefix under which it sits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from plmkit.errors import PlmkitError


class UnsupportedModelError(PlmkitError):
    """A model whose layout plmkit does not know."""


@dataclass(frozen=True)
class Anatomy:
    """The layout of one model type (paths relative to the base model, or to one layer)."""

    model_type: str
    """``config.model_type`` of the family."""
    kind: str
    """'encoder' (post-LN, bidirectional) or 'decoder' (pre-LN, causal)."""
    layers: str
    """Path of the ``nn.ModuleList`` of transformer layers."""
    stack: str
    """Path of the module whose parameters count as 'the layers' in budgets (holds the layer list)."""
    feed_forward: str
    """Path, inside a layer, of the module whose forward an injection site replaces."""
    site_style: str
    """How that module's output is split into adapter input and residual: 'bert', 'distilbert' or 'pre-ln'."""
    site_norm: str | None
    """Path, inside a layer, of the LayerNorm a post-LN site re-uses (None for pre-LN)."""
    attention: str
    """Path, inside a layer, of the attention block."""
    norms: tuple[str, str]
    """Paths, inside a layer, of (the attention sub-layer's norm, the feed-forward sub-layer's norm)."""
    residual_linears: tuple[str, ...]
    """Paths, inside a layer, of the linear layers whose output joins the residual stream."""
    hidden_size_attr: str
    """Config attribute holding the hidden size."""
    depth_attr: str
    """Config attribute holding the number of layers."""
    positions_attr: str
    """Config attribute holding the position limit."""
    token_type_ids: bool
    """Whether the forward takes BERT-style segment ids."""
    pooling: str
    """Default sentence pooling of a classifier head: 'mean' (encoders) or 'last' (last real token)."""
    final_norm: str | None = None
    """Path of the norm applied after the last layer (pre-LN decoders), None when there is none."""

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_size_attr))

    def depth(self, config) -> int:
        return int(getattr(config, self.depth_attr))

    def max_positions(self, config) -> int:
        return int(getattr(config, self.positions_attr))


def _post_ln(model_type: str, **changes) -> Anatomy:
    row = dict(
        model_type=model_type, kind="encoder", layers="encoder.layer", stack="encoder", feed_forward="output",
        site_style="bert", site_norm="output.LayerNorm", attention="attention",
        norms=("attention.output.LayerNorm", "output.LayerNorm"),
        residual_linears=("attention.output.dense", "output.dense"), hidden_size_attr="hidden_size",
        depth_attr="num_hidden_layers", positions_attr="max_position_embeddings", token_type_ids=True,
        pooling="mean",
    )
    return Anatomy(**{**row, **changes})


ANATOMIES: dict[str, Anatomy] = {row.model_type: row for row in (
    _post_ln("bert"),
    _post_ln("roberta"),
    _post_ln("xlm-roberta"),
    _post_ln("distilbert", layers="transformer.layer", stack="transformer", feed_forward="ffn",
             site_style="distilbert", site_norm="output_layer_norm", norms=("sa_layer_norm", "output_layer_norm"),
             residual_linears=("attention.out_lin", "ffn.lin2"), hidden_size_attr="dim", depth_attr="n_layers",
             token_type_ids=False),
    _post_ln("mpnet", norms=("attention.LayerNorm", "output.LayerNorm"),
             residual_linears=("attention.attn.o", "output.dense"), token_type_ids=False),
    Anatomy("llama", "decoder", layers="layers", stack="layers", feed_forward="mlp", site_style="pre-ln",
            site_norm=None, attention="self_attn", norms=("input_layernorm", "post_attention_layernorm"),
            residual_linears=("self_attn.o_proj", "mlp.down_proj"), hidden_size_attr="hidden_size",
            depth_attr="num_hidden_layers", positions_attr="max_position_embeddings", token_type_ids=False,
            pooling="last", final_norm="norm"),
    Anatomy("gpt2", "decoder", layers="h", stack="h", feed_forward="mlp", site_style="pre-ln", site_norm=None,
            attention="attn", norms=("ln_1", "ln_2"), residual_linears=("attn.c_proj", "mlp.c_proj"),
            hidden_size_attr="n_embd", depth_attr="n_layer", positions_attr="n_positions", token_type_ids=False,
            pooling="last", final_norm="ln_f"),
)}
ENCODER_TYPES = tuple(t for t, row in ANATOMIES.items() if row.kind == "encoder")
DECODER_TYPES = tuple(t for t, row in ANATOMIES.items() if row.kind == "decoder")


@dataclass
class Located:
    """A supported base model found inside ``model``: its row, itself, and its dotted prefix."""

    anatomy: Anatomy
    base: nn.Module
    prefix: str
    """'' when ``model`` is the base model, else e.g. 'model.' or 'encoder.' (with the trailing dot)."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.get_submodule(self.anatomy.layers)

    @property
    def stack(self) -> nn.Module:
        return self.base.get_submodule(self.anatomy.stack)

    @property
    def layers_path(self) -> str:
        """Dotted name of the layer list inside the model that was searched."""
        return self.prefix + self.anatomy.layers


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{what}; plmkit knows the layout of {', '.join(ANATOMIES)} models "
        "(a base model from AutoModel, a *ForCausalLM, or a classifier built on one)"
    )


def _layer_list(module: nn.Module, path: str) -> nn.ModuleList | None:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, nn.ModuleList) else None


def locate(model: nn.Module) -> Located:
    """The first sub-module (pre-order, ``model`` itself first) that is a supported base model."""
    seen_type = None
    for name, module in model.named_modules():
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if not isinstance(model_type, str):
            continue
        seen_type = seen_type or model_type
        row = ANATOMIES.get(model_type)
        if row is not None and _layer_list(module, row.layers) is not None:
            return Located(row, module, f"{name}." if name else "")
    if seen_type is not None and seen_type not in ANATOMIES:
        raise _unsupported(f"{type(model).__name__} is a {seen_type!r} model")
    raise _unsupported(f"{type(model).__name__} holds no model with a known layer list")


def anatomy_of(model: nn.Module) -> Anatomy:
    """The anatomy row of ``model`` (a base model, a ``*ForCausalLM`` wrapper or a classifier on one)."""
    return locate(model).anatomy


def anatomy_for_type(model_type: str) -> Anatomy:
    """The row of a ``config.model_type`` string."""
    if model_type not in ANATOMIES:
        raise _unsupported(f"model type {model_type!r} is not supported")
    return ANATOMIES[model_type]
