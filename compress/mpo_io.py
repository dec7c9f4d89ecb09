"""Save, load and merge models that hold MPOLinear layers (compressed or depth-scaled).

A saved model is a folder: ``config.json`` (format ``plmkit-mpo``: the HF config of the encoder or
the causal LM, each MPO layer's factors, ranks and dense layout, tied tensors, the head) + ``weights.safetensors`` (every tensor
once; a central tensor shared by many layers is stored under its first name and re-tied on load)
+ the tokenizer files. ``export_dense`` ("merge") rebuilds every weight and writes a plain
Hugging Face folder: ``*ForSequenceClassification`` when the head maps onto one (CLS pooling on
BERT / RoBERTa / XLM-R: our dense-tanh-out head is exactly their pooler + classifier), else the
bare encoder (or the causal LM, GPT-2 projections back as ``Conv1D``), usable by ``transformers.pipeline``.
Reading goes through ``plmkit.saving`` (file names, damaged weight files); the writer keeps every
tensor's dtype, which the shared writer (float32 groups) would not.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import locate
from plmkit.backbones import backbone_signature
from plmkit.compress.mpo_linear import MPOLinear
from plmkit.compress.mpo_model import merge_in_place, mpo_layers, set_module
from plmkit.io import atomic_directory, atomic_write_json, save_tensors_atomic
from plmkit.models import HeadConfig, SequenceClassifier, build_classifier
from plmkit.saving import CONFIG, WEIGHTS, ModuleFolderError, read_weights

FORMAT = "plmkit-mpo"
FORMAT_VERSION = 1
HEAD_EXPORT = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}


class MPOLoadError(ModuleFolderError):
    """A folder that is not a saved plmkit MPO model, or one that does not load."""


@dataclass
class LoadedMPOModel:
    model: nn.Module
    """A ``SequenceClassifier`` when a head was saved, else the encoder."""
    tokenizer: Any
    meta: dict[str, Any]

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder if isinstance(self.model, SequenceClassifier) else self.model


def _unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with each parameter once, {alias: first name}) for tied parameters."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
    return state, tied


def _layer_spec(layer: MPOLinear) -> dict[str, Any]:
    return {"in_factors": list(layer.in_factors), "out_factors": list(layer.out_factors), "ranks": layer.ranks,
            "bias": layer.bias is not None, "adapter_rank": layer.adapter_rank, "forward_mode": layer.forward_mode,
            "dense_layout": layer.dense_layout}


def _kind(model: nn.Module) -> str:
    if isinstance(model, SequenceClassifier):
        return "classifier"
    return "causal-lm" if locate(model).prefix else "encoder"


def save_mpo_model(path: str | Path, model: nn.Module, tokenizer: Any = None, backbone_name: str = "",
                   extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (an encoder, a causal LM or a ``SequenceClassifier``) with its MPO layers, atomically."""
    kind = _kind(model)
    is_classifier = kind == "classifier"
    encoder = model.encoder if is_classifier else model
    state, tied = _unique_tensors(model)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
        "model_config": encoder.config.to_dict(), "backbone": backbone_signature(encoder, backbone_name),
        "head": model.head.config.to_dict() if is_classifier else None,
        "mpo_layers": {name: _layer_spec(layer) for name, layer in mpo_layers(model).items()},
        "tied": tied, **(extra or {}),
    }
    with atomic_directory(path) as tmp:
        save_tensors_atomic(state, tmp / WEIGHTS)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / CONFIG, meta)  # last: its presence marks a complete folder
    return Path(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config = path / CONFIG
    if not config.is_file() or not (path / WEIGHTS).is_file():
        raise MPOLoadError(f"{path} is not a saved MPO model (needs config.json and weights.safetensors)")
    meta = json.loads(config.read_text())
    if meta.get("format") != FORMAT:
        hint = " (it looks like a Hugging Face model folder: load it with --model)" if "model_type" in meta else ""
        raise MPOLoadError(f"{config} is not a plmkit MPO model (format {meta.get('format')!r}){hint}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise MPOLoadError(f"{path} was written by a newer plmkit (format version {meta['format_version']})")
    return meta


def _skeleton(meta: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    settings = dict(meta["model_config"])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    if meta["kind"] == "causal-lm":
        return AutoModelForCausalLM.from_config(config)
    encoder = AutoModel.from_config(config)
    if meta["kind"] != "classifier":
        return encoder
    head = HeadConfig(**meta["head"])
    return build_classifier(encoder, head.num_labels, head.pooling, head.dropout)


def _tie(model: nn.Module, alias: str, source: str) -> None:
    param = model.get_parameter(source)
    parent_name, _, attr = alias.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.ParameterList):
        parent[int(attr)] = param
    else:
        setattr(parent, attr, param)


def load_mpo_model(path: str | Path, load_tokenizer: bool = True) -> LoadedMPOModel:
    """Rebuild a saved MPO model exactly: skeleton, MPO layers, tied tensors, weights, tokenizer."""
    meta = read_meta(path)
    model = _skeleton(meta)
    for name, spec in meta["mpo_layers"].items():
        layer = MPOLinear(spec["in_factors"], spec["out_factors"], spec["ranks"], bias=spec["bias"],
                          adapter_rank=spec["adapter_rank"], forward_mode=spec["forward_mode"])
        layer.dense_layout = spec.get("dense_layout", "linear")
        set_module(model, name, layer)
    for alias, source in meta["tied"].items():
        _tie(model, alias, source)
    try:
        state = read_weights(path, "MPO model")
    except ModuleFolderError as error:
        raise MPOLoadError(str(error)) from error
    for alias, source in meta["tied"].items():
        state[alias] = state[source]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise MPOLoadError(f"{path}: the weights do not match the saved layout: {error}") from error
    model.eval()
    tokenizer = None
    if load_tokenizer and any(Path(path).glob("tokenizer*")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedMPOModel(model, tokenizer, meta)


# ------------------------------------------------------------------------------ dense export
def _classifier_for_hf(model: SequenceClassifier, label_names: list[str] | None) -> nn.Module | None:
    """The equivalent ``AutoModelForSequenceClassification``, or None if the head has no HF twin."""
    from transformers import AutoModelForSequenceClassification

    family = HEAD_EXPORT.get(model.encoder.config.model_type)
    if family is None or model.head.config.pooling != "cls":
        return None
    config = copy.deepcopy(model.encoder.config)
    num_labels = model.head.config.num_labels
    names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    config.num_labels, config.id2label = num_labels, dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    hf = AutoModelForSequenceClassification.from_config(config)
    base = getattr(hf, hf.base_model_prefix)
    missing, _ = base.load_state_dict(model.encoder.state_dict(), strict=False)
    if missing:
        raise MPOLoadError(f"cannot export: the encoder lacks {missing[:3]}")
    dense, out = (base.pooler.dense, hf.classifier) if family == "bert" else (hf.classifier.dense, hf.classifier.out_proj)
    dense.load_state_dict(model.head.dense.state_dict())
    out.load_state_dict(model.head.out_proj.state_dict())
    return hf


def export_dense(source: str | Path | LoadedMPOModel, out_dir: str | Path) -> dict[str, Any]:
    """Merge every MPO layer into a dense weight and write a plain Hugging Face model folder."""
    loaded = source if isinstance(source, LoadedMPOModel) else load_mpo_model(source)
    model = merge_in_place(copy.deepcopy(loaded.model))
    label_names = loaded.meta.get("label_names")
    hf = _classifier_for_hf(model, label_names) if isinstance(model, SequenceClassifier) else None
    with atomic_directory(out_dir) as tmp:
        if hf is not None:
            hf.save_pretrained(str(tmp))
            kind = "text-classification"
        else:
            encoder = model.encoder if isinstance(model, SequenceClassifier) else model
            encoder.save_pretrained(str(tmp))
            kind = "text-generation" if _kind(model) == "causal-lm" else "feature-extraction"
            if isinstance(model, SequenceClassifier):
                # Mean pooling (or a DistilBERT/MPNet head) has no HF class: keep the head beside it.
                save_tensors_atomic({k: v.detach().cpu() for k, v in model.head.state_dict().items()},
                                    tmp / "plmkit_head.safetensors")
                atomic_write_json(tmp / "plmkit_head.json", {"head": model.head.config.to_dict(),
                                                             "label_names": label_names})
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(str(tmp))
    return {"path": str(out_dir), "pipeline": kind}
