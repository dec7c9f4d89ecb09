"""The jobs behind ``plmkit compress mpo`` and ``plmkit compress mpo-deep``: each writes a run folder.

``mpo`` (MPOP workflow by default): fine-tune the dense model on the task (the uncompressed
reference), decompose its encoder to the parameter budget, evaluate (before), fine-tune the
auxiliary tensors or everything (after), save the MPO model and its dense merge, time the forward.
``mpo-deep``: grow a k x L-layer MPO encoder with shared central tensors, check how close it starts to
the shallow model, fine-tune it and the shallow dense model the same way, and compare.
"""

from __future__ import annotations

import copy
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from plmkit import distributed
from plmkit.backbones import DEFAULT_ENCODER, load_encoder
from plmkit.compress.mpo_depth import DeepMPOConfig, build_deep_mpo, hidden_deviation
from plmkit.compress.mpo_io import LoadedMPOModel, export_dense, save_mpo_model
from plmkit.compress.mpo_linear import FACTORED_PENALTY
from plmkit.compress.mpo_model import MPOConfig, attach_mpo, count_parameters, mpo_layers
from plmkit.errors import ConfigError
from plmkit.jobs import DataArgs, finetune_and_evaluate, open_task_job
from plmkit.losses import DistillationLoss
from plmkit.models import build_classifier
from plmkit.report import plot_heatmap
from plmkit.runs import RunFolder
from plmkit.textclf import TaskData
from plmkit.trainer import TrainerConfig

logger = logging.getLogger("plmkit")
COMPRESS_FROM = ("finetuned", "pretrained")
MAX_PREDICTED_SLOWDOWN = 20.0
"""Skip timing the all-factored forward when the cost model predicts it this many times slower."""


@dataclass
class CompressSetup(DataArgs):
    """Which model and task, and how the compressed model is obtained and measured."""

    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id (--model is an alias)."""
    task: str | None = None
    """A built-in task or a data folder to fine-tune and evaluate on (none: compress only)."""
    compress_from: str = "finetuned"
    """'finetuned': fine-tune dense, compress, fine-tune again (MPOP); 'pretrained': compress, then fine-tune."""
    dense_epochs: int | None = None
    """Epochs of the dense fine-tuning (default: --epochs)."""
    mpo_learning_rate: float | None = 3e-4
    """Learning rate when fine-tuning the compressed model (none: --learning-rate). A truncated model has
    further to move than the dense one: at 50 % on rotten-tomatoes, 3e-4 beat 1e-4 and 6e-4."""
    distill: float = 0.5
    """Weight of distillation from the fine-tuned dense model when fine-tuning the MPO model (0: none)."""
    distill_temperature: float = 2.0
    """Softmax temperature of the distillation term."""
    distill_hidden: float = 0.0
    """Weight of matching the dense model's hidden states layer by layer (relative squared error; 0: off)."""
    pooling: str = "cls"
    """Head pooling: 'cls' (merges into a standard *ForSequenceClassification) or 'mean'."""
    merge: bool = True
    """Also write the dense merge (a plain Hugging Face folder) next to the MPO model."""
    latency_batch: int = 32
    """Sequences per batch when timing the forward pass."""
    latency_tokens: int = 64
    """Tokens per sequence when timing the forward pass."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compress_from not in COMPRESS_FROM:
            raise ConfigError(f"compress_from must be one of {COMPRESS_FROM}, got {self.compress_from!r}")
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.dense_epochs is not None and self.dense_epochs < 0:
            raise ConfigError(f"dense_epochs must be >= 0, got {self.dense_epochs}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill}")
        if self.distill_hidden < 0:
            raise ConfigError(f"distill_hidden must be >= 0, got {self.distill_hidden}")
        if self.latency_batch < 1 or self.latency_tokens < 1:
            raise ConfigError("--latency-batch and --latency-tokens must be >= 1")


# ------------------------------------------------------------------------------ helpers
@torch.no_grad()
def forward_latency_ms(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 5) -> float:
    """Median wall time of one eval forward pass (after a warm-up pass)."""
    was = model.training
    model.eval()
    model(**batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(**batch)
        times.append((time.perf_counter() - started) * 1e3)
    model.train(was)
    return statistics.median(times)


def latency_batch(tokenizer: Any, batch: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch of random in-vocabulary token ids with full attention."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tokenizer), (batch, tokens), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _encoder_only(model: nn.Module) -> nn.Module:
    return model.encoder if hasattr(model, "head") else model


def _splits(data: TaskData, model: nn.Module) -> dict[str, dict[str, float]]:
    return {"validation": data.evaluate(model, "validation"), "test": data.evaluate(model, "test")}


finetune_classifier = finetune_and_evaluate  # the name scripts and earlier releases import


# ------------------------------------------------------------------------------ mpo
def _compressed_model(setup: CompressSetup, dense: nn.Module, num_labels: int | None) -> nn.Module:
    if setup.compress_from == "finetuned" or num_labels is None:
        return copy.deepcopy(dense)
    return build_classifier(load_encoder(setup.backbone).model, num_labels, pooling=setup.pooling)


def compress_mpo(setup: CompressSetup, config: MPOConfig, trainer: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    """Compress ``setup.model`` with ``config``; fine-tune and evaluate when a task is given."""
    started = time.perf_counter()
    task, backbone, data = open_task_job("compress mpo", setup, trainer, run, mpo=config)
    metrics: dict[str, Any] = {"model": backbone.name, "task": task.name if task else None,
                               "metric": task.metric if task else None}
    dense = _dense_reference(setup, backbone, data, trainer, run, metrics)
    model = _compressed_model(setup, dense, task.num_labels if task else None)
    handle = attach_mpo(model, config)
    if hasattr(model, "head"):
        model.head.requires_grad_(config.trainable != "none")
    _record_size(metrics, dense, model, handle)
    _plot_layer_errors(run, handle.report, metrics["parameters"]["encoder_fraction"])
    if data is not None:
        _tune_compressed(setup, config, trainer, run, data, dense, model, metrics)
    metrics["latency_ms"] = _latencies(dense, model, backbone.tokenizer, setup)
    _save(run, model, backbone, task, setup, config, metrics)
    metrics["wall_time_s"] = time.perf_counter() - started
    run.write_json("metrics.json", metrics)
    return metrics


def _dense_reference(setup: CompressSetup, backbone, data: TaskData | None, trainer: TrainerConfig,
                     run: RunFolder, metrics: dict[str, Any]) -> nn.Module:
    """The uncompressed model: the encoder, or a classifier fine-tuned on the task (``metrics['dense']``)."""
    if data is None:
        return backbone.model
    dense = build_classifier(backbone.model, data.task.num_labels, pooling=setup.pooling)
    epochs = trainer.epochs if setup.dense_epochs is None else setup.dense_epochs
    metrics["dense"] = (finetune_and_evaluate(dense, data, replace(trainer, epochs=epochs), run.path / "dense")
                        if epochs else _splits(data, dense))
    return dense


def _record_size(metrics: dict[str, Any], dense: nn.Module, model: nn.Module, handle) -> None:
    sizes = {"dense": count_parameters(dense), "mpo": count_parameters(model)}
    sizes["encoder_fraction"] = sizes["mpo"]["encoder"] / sizes["dense"]["encoder"]
    metrics["parameters"], metrics["layers"] = sizes, handle.report
    logger.info("encoder parameters %d -> %d (%.1f%%)", sizes["dense"]["encoder"], sizes["mpo"]["encoder"],
                100 * sizes["encoder_fraction"])


def _tune_compressed(setup: CompressSetup, config: MPOConfig, trainer: TrainerConfig, run: RunFolder,
                     data: TaskData, dense: nn.Module, model: nn.Module, metrics: dict[str, Any]) -> None:
    """Evaluate the compressed model, fine-tune it (distilling from the tuned dense model), evaluate again."""
    metrics["before"] = _splits(data, model)
    if config.trainable == "none":
        return
    lr = setup.mpo_learning_rate or trainer.learning_rate
    teacher = (setup.distill or setup.distill_hidden) and "train" in metrics["dense"]  # only a tuned model teaches
    # (1 - distill) * task + distill * T² KL + distill_hidden * hidden: each term is logged by the trainer
    loss_fn = (DistillationLoss.mixed(dense, setup.distill, temperature=setup.distill_temperature,
                                      hidden_weight=setup.distill_hidden)
               if teacher else None)
    metrics["after"] = finetune_and_evaluate(model, data, replace(trainer, learning_rate=lr), run.path / "mpo",
                                             loss=loss_fn)


def _latencies(dense: nn.Module, model: nn.Module, tokenizer: Any, setup: CompressSetup) -> dict[str, Any]:
    batch = latency_batch(tokenizer, setup.latency_batch, setup.latency_tokens)
    out = {"batch": [setup.latency_batch, setup.latency_tokens],
           "dense": forward_latency_ms(_encoder_only(dense), batch),
           "mpo_auto": forward_latency_ms(_encoder_only(model), batch)}
    layers = mpo_layers(model).values()
    modes = [layer.forward_mode for layer in layers]
    tokens = setup.latency_batch * setup.latency_tokens
    slowdown = (sum(FACTORED_PENALTY * layer.flops(tokens, cached=True)["factored"] for layer in layers)
                / max(1.0, sum(layer.flops(tokens, cached=True)["gemm"] for layer in layers)))
    for forced in ("dense", "factored"):
        if forced == "factored" and slowdown > MAX_PREDICTED_SLOWDOWN:
            out["mpo_factored"] = None  # the cost model predicts minutes; not worth timing
            out["mpo_factored_predicted_slowdown"] = slowdown
            continue
        for layer in layers:
            layer.forward_mode = forced
        out[f"mpo_{forced}"] = forward_latency_ms(_encoder_only(model), batch, repeats=3)
    for layer, mode in zip(layers, modes, strict=True):
        layer.forward_mode = mode
    return out


def layer_error_grid(report: list[dict[str, Any]]) -> tuple[list[list[float]], list[str], list[str]]:
    """Arrange per-matrix relative errors as layers x matrix kinds (e.g. 'attention.self.query')."""
    cells: dict[tuple[int, str], float] = {}
    for entry in report:
        match = re.search(r"(?:^|\.)(\d+)\.(.+)$", entry["name"])
        layer, kind = (int(match.group(1)), match.group(2)) if match else (0, entry["name"])
        cells[(layer, kind)] = entry["relative_error"]
    layers = sorted({layer for layer, _ in cells})
    kinds = list(dict.fromkeys(kind for _, kind in cells))
    grid = [[cells.get((layer, kind), float("nan")) for kind in kinds] for layer in layers]
    return grid, [f"layer {layer}" for layer in layers], kinds


def _plot_layer_errors(run: RunFolder, report: list[dict[str, Any]], fraction: float) -> None:
    if not distributed.is_main_process() or not report:
        return
    grid, rows, columns = layer_error_grid(report)
    plot_heatmap(grid, rows, columns, run.path / "layer_errors.png", colorbar_label="relative error ||W - W_mpo|| / ||W||",
                 title=f"MPO reconstruction error per matrix (encoder at {fraction:.0%})")


def _save(run: RunFolder, model: nn.Module, backbone, task, setup, config, metrics: dict[str, Any]) -> None:
    if not distributed.is_main_process():
        return
    extra = {"label_names": task.label_names if task else None, "task": task.describe() if task else None,
             "mpo": asdict(config), "max_length": setup.max_length}
    save_mpo_model(run.path / "model", model, backbone.tokenizer, backbone.name, extra=extra)
    metrics["model_dir"] = str(run.path / "model")
    if setup.merge:
        loaded = LoadedMPOModel(model, backbone.tokenizer, {"label_names": extra["label_names"]})
        metrics["merged"] = export_dense(loaded, run.path / "merged")


# ------------------------------------------------------------------------------ mpo-deep
@dataclass
class DeepSetup(DataArgs):
    """Which model and task the deep MPO encoder is grown from and evaluated on."""

    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id (--model is an alias)."""
    task: str = "rotten-tomatoes"
    """A built-in task or a data folder to fine-tune and evaluate on."""
    baseline: bool = True
    """Also fine-tune the shallow dense model the same way, for comparison."""
    pooling: str = "cls"
    """Head pooling: 'cls' or 'mean'."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")


def _init_deviation(backbone, data: TaskData, deep: nn.Module, config: DeepMPOConfig) -> dict[str, float]:
    """Relative gap of the deep model's hidden states to the shallow ones at init (16 validation texts)."""
    batch = data.collator(data.validation[:16])
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    shallow = build_deep_mpo(backbone.model, replace(config, depth_multiplier=1)).model
    return {"vs_shallow_shared": hidden_deviation(deep, shallow, batch),
            "vs_pretrained": hidden_deviation(deep, backbone.model, batch),
            "shallow_shared_vs_pretrained": hidden_deviation(shallow, backbone.model, batch)}


def deep_mpo(setup: DeepSetup, config: DeepMPOConfig, trainer: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    """Grow a deep MPO encoder from ``setup.model``, fine-tune it on ``setup.task`` and compare."""
    started = time.perf_counter()
    task, backbone, data = open_task_job("compress mpo-deep", setup, trainer, run, deep=config)
    deep = build_deep_mpo(backbone.model, config)
    metrics: dict[str, Any] = {"model": backbone.name, "task": task.name, "metric": task.metric,
                               "report": deep.report,
                               "init_deviation": _init_deviation(backbone, data, deep.model, config)}
    logger.info("deep model: %d -> %d layers, %d -> %d parameters; init deviation %s",
                deep.report["pretrained_layers"], deep.report["deep_layers"],
                deep.report["shallow_parameters"]["total"], deep.report["deep_parameters"]["total"],
                metrics["init_deviation"])
    classifier = build_classifier(deep.model, task.num_labels, pooling=setup.pooling)
    metrics["deep"] = finetune_and_evaluate(classifier, data, trainer, run.path / "deep")
    if setup.baseline:
        shallow = build_classifier(backbone.model, task.num_labels, pooling=setup.pooling)
        metrics["shallow"] = finetune_and_evaluate(shallow, data, trainer, run.path / "shallow")
    batch = latency_batch(backbone.tokenizer, 32, 64)
    metrics["latency_ms"] = {"shallow": forward_latency_ms(backbone.model, batch),
                             "deep": forward_latency_ms(deep.model, batch)}
    if distributed.is_main_process():
        save_mpo_model(run.path / "model", classifier, backbone.tokenizer, backbone.name,
                       extra={"label_names": task.label_names, "task": task.describe(), "deep": asdict(config)})
    metrics["wall_time_s"] = time.perf_counter() - started
    run.write_json("metrics.json", metrics)
    return metrics
