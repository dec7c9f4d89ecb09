"""Stage 1: soft prompts over a frozen backbone — prompt tuning and deep prefixes.

**Prompt tuning** (``mode="prompt"``, Lester et al. 2021): P trainable vectors E (P × hidden) are
prepended to the word embeddings of every row,

    inputs_embeds = [E; W_emb(x)]       attention mask [1_P; m]      token types [0_P; t]

and the backbone's output is cut back to the real tokens (``h[:, P:]``), so a ``SequenceClassifier``
keeps its inputs and its head pools real tokens only. Prompt vectors take positions 0..P-1 and the
text shifts by P (they are part of the input sequence), so P + max_length must fit the positions.
Init: ``random`` (Normal(0, std of the word-embedding rows)), ``vocab`` (rows of randomly drawn
vocabulary tokens, seeded by torch's RNG) or ``text`` (the embeddings of ``init_text``'s tokens,
cycled to length P; needs the tokenizer).

**Deep prefixes** (``mode="prefix"``, P-tuning v2): per layer l, P key and value vectors K_l, V_l
(P × kv_width) that every query attends to besides the text,

    attention_l(q) = softmax(q [K_l; k(x)]^T / sqrt(d)) [V_l; v(x)]

fed through the attention cache (a fresh ``DynamicCache`` holding the prefixes, built per forward)
with the mask extended by P ones. Positions: the text keeps positions 0..S-1 (we pass position ids;
the cache alone would shift them by P), so a prefix never costs position slots. With
``reparameterize`` the prefixes are an MLP of a P × hidden embedding (tanh, width
``reparam_hidden``), trained and saved as such. Prefixes work on BERT and Llama backbones (those
attention classes read the cache); MPNet and DistilBERT have no cache and are refused.

The backbone is frozen; the prompt module lives on the base model as ``plmkit_prompt`` (so the
trainer sees its parameters) and acts through forward hooks, removed again by ``handle.detach()``.
Saved as ``config.json`` + ``weights.safetensors`` (tensors under ``prompt.``, the head under ``head.``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import UnsupportedModelError, locate
from plmkit.errors import ConfigError
from plmkit.handles import Handle
from plmkit.mtl.registry import SourceKind, register_source_kind
from plmkit.saving import ModuleFolderError, check_backbone, check_tensors, read_module_folder

KIND = "prompt"
FORMAT = "plmkit-prompt"
PROMPT_ATTR = "plmkit_prompt"
MODES = ("prompt", "prefix")
INITS = ("random", "vocab", "text")
PREFIX_TYPES = ("bert", "llama")
"""Model types whose attention reads prefixes from the cache."""


@dataclass
class PromptConfig:
    """A soft prompt: which kind, how long, how initialised."""

    mode: str = "prompt"
    """'prompt' (trainable input embeddings prepended) or 'prefix' (per-layer key/value prefixes)."""
    length: int = 20
    """Number of prompt vectors (or prefix positions per layer)."""
    init: str = "vocab"
    """Prompt init: 'random', 'vocab' (embeddings of random vocabulary tokens) or 'text' (of init_text)."""
    init_text: str = ""
    """Text whose token embeddings initialise the prompt when init is 'text'."""
    reparameterize: bool = False
    """Prefixes only: produce them with an MLP from a P × hidden embedding."""
    reparam_hidden: int = 128
    """Width of the reparameterisation MLP."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"prompt mode must be one of {MODES}, got {self.mode!r}")
        if self.length < 1:
            raise ConfigError(f"prompt length must be >= 1, got {self.length}")
        if self.init not in INITS:
            raise ConfigError(f"prompt init must be one of {INITS}, got {self.init!r}")
        if self.init == "text" and not self.init_text.strip():
            raise ConfigError("prompt init 'text' needs --prompt-init-text with some words")
        if self.mode == "prefix" and self.init != "random" and not self.reparameterize:
            raise ConfigError("deep prefixes start random: use --prompt-init random (or --prompt-mode prompt)")
        if self.reparameterize and self.mode != "prefix":
            raise ConfigError("reparameterize applies to deep prefixes only (--prompt-mode prefix)")
        if self.reparam_hidden < 1:
            raise ConfigError(f"reparam_hidden must be >= 1, got {self.reparam_hidden}")


# ------------------------------------------------------------------------------ modules
class SoftPrompt(nn.Module):
    """P trainable input embeddings; ``forward() -> (P, hidden)``."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(init.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.embedding


class DeepPrefix(nn.Module):
    """Per-layer key/value prefixes; ``forward() -> (layers, 2, P, kv_width)``."""

    def __init__(self, length: int, num_layers: int, kv_width: int, hidden: int, reparam_hidden: int = 0) -> None:
        super().__init__()
        self.shape = (num_layers, 2, length, kv_width)
        if reparam_hidden:
            self.embedding = nn.Parameter(torch.randn(length, hidden) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(hidden, reparam_hidden), nn.Tanh(),
                                     nn.Linear(reparam_hidden, num_layers * 2 * kv_width))
        else:
            self.prefix = nn.Parameter(torch.randn(*self.shape) * 0.02)

    def forward(self) -> torch.Tensor:
        if hasattr(self, "prefix"):
            return self.prefix
        layers, two, length, width = self.shape
        flat = self.mlp(self.embedding)  # (P, layers * 2 * kv_width)
        # (P, layers, 2, kv_width) -> (layers, 2, P, kv_width)
        return flat.view(length, layers, two, width).permute(1, 2, 0, 3)


def _kv_geometry(config: Any) -> tuple[int, int]:
    """(key/value heads, head dim) of a BERT or Llama config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return getattr(config, "num_key_value_heads", None) or heads, head_dim


class PromptedBackbone(nn.Module):
    """The prompt parameters plus the hooks that feed them to the base model."""

    def __init__(self, config: PromptConfig, module: nn.Module, anatomy: Any, model_config: Any) -> None:
        super().__init__()
        self.config = config
        self.prompt = module
        self.kind = anatomy.kind
        self.max_positions = anatomy.max_positions(model_config)
        self.model_config = model_config

    @property
    def length(self) -> int:
        return self.config.length

    def before(self, base: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: extend the inputs (prompt vectors, or a prefix cache) and the mask."""
        if args:
            kwargs = {**dict(zip(("input_ids", "attention_mask"), args, strict=False)), **kwargs}
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is None:
            embeds = base.get_input_embeddings()(ids)  # (batch, seq, hidden)
        batch, seq = embeds.shape[:2]
        mask = kwargs.get("attention_mask")
        mask = torch.ones(batch, seq, dtype=torch.long, device=embeds.device) if mask is None else mask
        ones = torch.ones(batch, self.length, dtype=mask.dtype, device=mask.device)
        kwargs["attention_mask"] = torch.cat([ones, mask], 1)  # (batch, P + seq)
        if self.config.mode == "prompt":
            self._prompt_inputs(kwargs, embeds, seq)
        else:
            self._prefix_inputs(kwargs, embeds, seq)
        return (), kwargs

    def _prompt_inputs(self, kwargs: dict, embeds: torch.Tensor, seq: int) -> None:
        batch, P = embeds.shape[0], self.length
        if P + seq > self.max_positions:
            raise ConfigError(f"{P} prompt vectors + {seq} tokens exceed this backbone's {self.max_positions} "
                              "positions; lower --max-length or --prompt-length")
        prompt = self.prompt().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)  # (batch, P, hidden)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], 1)  # (batch, P + seq, hidden)
        if kwargs.get("token_type_ids") is not None:
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, P), types], 1)
        if kwargs.get("position_ids") is not None:  # decoders: prompt at 0..P-1, text after it
            positions = kwargs["position_ids"]
            head = torch.arange(P, device=positions.device).expand(batch, P)
            kwargs["position_ids"] = torch.cat([head, positions + P], 1)

    def _prefix_inputs(self, kwargs: dict, embeds: torch.Tensor, seq: int) -> None:
        from transformers import DynamicCache

        batch = embeds.shape[0]
        kv_heads, head_dim = _kv_geometry(self.model_config)
        prefixes = self.prompt().to(embeds.dtype)  # (layers, 2, P, kv_width)
        cache = DynamicCache(config=self.model_config)
        for layer, (keys, values) in enumerate(prefixes):
            # (P, kv_heads * head_dim) -> (batch, kv_heads, P, head_dim)
            keys = keys.view(self.length, kv_heads, head_dim).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
            values = values.view(self.length, kv_heads, head_dim).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
            cache.update(keys, values, layer)
        kwargs["inputs_embeds"] = embeds
        kwargs["cache"] = cache
        kwargs["use_cache"] = False
        if kwargs.get("position_ids") is None:  # the text keeps positions 0..S-1 (no shift by P)
            kwargs["position_ids"] = torch.arange(seq, device=embeds.device).expand(batch, seq)

    def after(self, base: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook: drop the prompt positions from the states (prompt mode), keep real tokens."""
        if self.config.mode != "prompt":
            return output
        output["last_hidden_state"] = output["last_hidden_state"][:, self.length:]
        if output.get("hidden_states") is not None:
            output["hidden_states"] = tuple(h[:, self.length:] for h in output["hidden_states"])
        return output


# ------------------------------------------------------------------------------ attach
def initial_prompt(base: nn.Module, config: PromptConfig, tokenizer: Any = None) -> torch.Tensor:
    """(P, hidden) starting prompt vectors from the frozen word embeddings."""
    table = base.get_input_embeddings().weight.detach().float()  # (vocab, hidden)
    if config.init == "random":
        return torch.randn(config.length, table.shape[1]) * table.std()
    if config.init == "vocab":
        return table[torch.randint(0, table.shape[0], (config.length,))].clone()
    if tokenizer is None:
        raise ConfigError("prompt init 'text' needs the backbone's tokenizer: attach_prompts(model, config, tokenizer)")
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"--prompt-init-text {config.init_text!r} gives no tokens")
    ids = (ids * config.length)[:config.length]
    return table[torch.tensor(ids)].clone()


def build_prompt_module(base: nn.Module, anatomy: Any, config: PromptConfig, tokenizer: Any = None) -> nn.Module:
    if config.mode == "prompt":
        return SoftPrompt(initial_prompt(base, config, tokenizer))
    if base.config.model_type not in PREFIX_TYPES:
        raise UnsupportedModelError(f"deep prefixes need an attention cache ({', '.join(PREFIX_TYPES)} models); "
                                    f"{base.config.model_type!r} has none: use --prompt-mode prompt")
    kv_heads, head_dim = _kv_geometry(base.config)
    return DeepPrefix(config.length, anatomy.depth(base.config), kv_heads * head_dim,
                      anatomy.hidden_size(base.config), config.reparam_hidden if config.reparameterize else 0)


class PromptHandle(Handle):
    """What ``attach_prompts`` added: the prompt module and its two hooks."""

    format = FORMAT
    prefix = "prompt"

    def __init__(self, model: nn.Module, config: PromptConfig, base: nn.Module, module: PromptedBackbone,
                 hooks: list, frozen: list[nn.Parameter]) -> None:
        super().__init__(model, [], [module.prompt], frozen)
        self.config = config
        self.base = base
        self.module = module
        self._hooks = hooks

    def meta(self) -> dict[str, Any]:
        return {"kind": KIND, "prompt": asdict(self.config)}

    def vectors(self) -> torch.Tensor:
        """The prompt as the backbone sees it: (P, hidden) or (layers, 2, P, kv_width)."""
        return self.module.prompt().detach()

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if getattr(self.base, PROMPT_ATTR, None) is self.module:
            delattr(self.base, PROMPT_ATTR)
        super().detach()


def attach_prompts(model: nn.Module, config: PromptConfig | None = None, tokenizer: Any = None,
                   freeze: bool = True) -> PromptHandle:
    """Add a soft prompt (or deep prefixes) to a supported encoder or decoder and freeze the backbone."""
    config = config or PromptConfig()
    located = locate(model)
    base = located.base
    if hasattr(base, PROMPT_ATTR):
        raise ConfigError("this model already carries a soft prompt; detach it first")
    frozen = [p for p in model.parameters() if p.requires_grad] if freeze else []
    for param in frozen:
        param.requires_grad_(False)
    prompt = build_prompt_module(base, located.anatomy, config, tokenizer)
    reference = next(base.parameters())
    prompt.to(device=reference.device)
    module = PromptedBackbone(config, prompt, located.anatomy, base.config)
    base.add_module(PROMPT_ATTR, module)  # bound-method hooks below stay consistent under deepcopy
    hooks = [base.register_forward_pre_hook(module.before, with_kwargs=True),
             base.register_forward_hook(module.after, with_kwargs=True)]
    return PromptHandle(model, config, base, module, hooks, frozen)


# ------------------------------------------------------------------------------ save / load
def save_prompts(path: str | Path, handle: PromptHandle, head: nn.Module | None = None, backbone_name: str = "",
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``weights.safetensors`` (prompt and head only) atomically."""
    return handle.save(path, head=head, backbone_name=backbone_name, extra=extra)


def prompt_config_from_meta(meta: dict[str, Any], source: str) -> PromptConfig:
    try:
        return PromptConfig(**meta["prompt"])
    except (KeyError, TypeError, ConfigError) as error:
        raise ModuleFolderError(f"{source}: config.json has no usable prompt config ({error}); "
                                "delete the folder and train the prompt again") from error


def load_prompt_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(config, prompt tensors, head tensors) of a saved prompt, without touching a model."""
    meta, groups = read_module_folder(path, FORMAT, "soft prompt")
    return meta, groups.get("prompt", {}), groups.get("head", {})


def _shell(config: PromptConfig) -> PromptConfig:
    """The config to attach before loading saved tensors (the init is overwritten anyway)."""
    return replace(config, init="random") if config.mode == "prompt" else config


def load_prompts(path: str | Path, model: nn.Module, backbone_name: str = "", freeze: bool = True
                 ) -> tuple[PromptHandle, dict[str, Any], dict[str, torch.Tensor]]:
    """Attach a saved prompt to ``model``; returns (handle, config, head tensors)."""
    meta, tensors, head = load_prompt_weights(path)
    check_backbone(meta, model, str(path), backbone_name)
    config = prompt_config_from_meta(meta, str(path))
    handle = attach_prompts(model, _shell(config), freeze=freeze)
    handle.config = config
    try:
        handle.load_state_dict(tensors, source=f"soft prompt {path}")
    except ModuleFolderError:
        handle.detach()
        raise
    return handle, meta, head


def read_prompts(path: str | Path, model: nn.Module, source: str, backbone_name: str = ""
                 ) -> tuple[PromptConfig, dict[str, torch.Tensor]]:
    """A saved prompt's config and tensors, checked against ``model`` (backbone and tensor shapes)."""
    meta, tensors, _ = load_prompt_weights(path)
    check_backbone(meta, model, source, backbone_name)
    config = prompt_config_from_meta(meta, source)
    located = locate(model)
    shell = build_prompt_module(located.base, located.anatomy, _shell(config))
    check_tensors({f"layers.0.{k}": v for k, v in shell.state_dict().items()}, tensors, source)
    return config, tensors


def load_prompt_tensors(handle: PromptHandle, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved prompt tensors (``layers.0.*``) into an attached prompt: the transfer init."""
    handle.load_state_dict(tensors, source=source)


def stack_prompts(config: PromptConfig, tensors: list[dict[str, torch.Tensor]], layer: int) -> nn.Module:
    raise ConfigError("soft prompts are not composed per layer: transfer them with --method prompt-transfer "
                      "or --method panda")


register_source_kind(SourceKind(name=KIND, config_class=PromptConfig, attach=attach_prompts, save=save_prompts,
                                load=load_prompts, read=read_prompts, stack=stack_prompts))
