"""Stage 1: train one bottleneck adapter (plus a task head) on a task over a frozen backbone.

``train_source`` is the one stage-1 path for every kind: ``plmkit adapters train`` calls it through
``train_adapter``, and the transfer pipeline calls it for every source whose module is not stored yet.

A source is only worth transferring from if it learned its own task. ``constant_baseline`` scores the
best input-blind predictor on a split — the training set's majority class for classification, its
mean for regression (correlations of a constant are 0) — and ``source_quality`` calls a source
**weak** when its validation primary metric is at most ``margin`` above that score ("near" the
baseline: within ``WEAK_MARGIN`` = 0.02, i.e. 2 points of accuracy / F1 / MCC / correlation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit import distributed
from plmkit.backbones import DEFAULT_ENCODER, Backbone, load_encoder
from plmkit.jobs import DataArgs, finetune_and_evaluate
from plmkit.metrics import compute_metrics
from plmkit.models import build_classifier
from plmkit.mtl.adapters import KIND, AdapterConfig
from plmkit.mtl.registry import source_kind
from plmkit.report import plot_training_curves
from plmkit.runs import RunFolder, environment
from plmkit.tasks import Task
from plmkit.textclf import TaskData
from plmkit.trainer import TrainerConfig, seed_everything

logger = logging.getLogger("plmkit")


@dataclass
class TaskSetup(DataArgs):
    """Which task and backbone, and how text is fed to it (data fields from ``plmkit.jobs.DataArgs``)."""

    task: str = "rotten-tomatoes"
    """A built-in task, a data file or folder (CSV/TSV/JSONL/parquet), or a hub data set id."""
    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id."""
    pooling: str | None = None
    """Head pooling: 'mean', 'cls' or 'last' (default: the model type's own: mean for encoders, last for decoders)."""

    def load_task(self):
        return self.load(self.task)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@dataclass
class SourceResult:
    """What ``train_source`` produced: scores, the trained classifier and its stage-1 handle."""

    metrics: dict[str, Any]
    handle: Any
    classifier: torch.nn.Module
    folder: Path


def train_source(model: torch.nn.Module, backbone: Backbone, task: Task, kind: str, config: Any,
                 trainer: TrainerConfig, folder: str | Path, *, max_length: int = 128, pooling: str = "mean",
                 train_folder: str | Path | None = None) -> SourceResult:
    """The one stage-1 path: seed, attach ``kind`` to ``model``, train with a head, score, save to ``folder``.

    Torch is seeded (``trainer.seed``) *before* the module and head are initialised, so the same
    command on the same data gives the same module bit for bit.
    """
    spec = source_kind(kind)
    seed_everything(trainer.seed)
    handle = spec.attach(model, config)
    classifier = build_classifier(model, task.num_labels, pooling=pooling)
    trainable, total = count_parameters(classifier)
    logger.info("backbone %s (%s, %d parameters); training %d %s + head parameters",
                backbone.name, backbone.config.model_type, total - trainable, trainable, kind)
    data = TaskData(task, backbone.tokenizer, max_length, model_config=backbone.config)
    scores = finetune_and_evaluate(classifier, data, trainer, train_folder)
    metrics = {"task": task.name, "backbone": backbone.name, "kind": kind, "metric": task.metric, **scores,
               "trainable_parameters": trainable, "adapter_parameters": handle.num_parameters(),
               "total_parameters": total}
    if distributed.is_main_process():
        spec.save(folder, handle, head=classifier.head, backbone_name=backbone.name,
                  extra={"task": task.describe(), "label_names": task.label_names, "max_length": max_length,
                         "validation": scores["validation"]})
    return SourceResult(metrics, handle, classifier, Path(folder))


WEAK_MARGIN = 0.02
"""A source whose validation metric is at most this far above the constant baseline is weak."""


def constant_baseline(task: Task, split: str = "validation") -> dict[str, float]:
    """Scores on ``split`` of the constant prediction fitted on the training split.

    Classification: always the training set's most frequent label (the majority-class baseline);
    regression: always the training mean (every correlation of a constant is 0).
    """
    train = np.asarray(task.train[task.label_field])
    references = np.asarray(getattr(task, split)[task.label_field])
    if task.is_regression:
        constant = np.full(len(references), float(train.mean()))
    else:
        labels, counts = np.unique(train, return_counts=True)
        constant = np.full(len(references), int(labels[counts.argmax()]))
    return compute_metrics(constant, references, is_regression=task.is_regression)


def source_quality(task: Task, validation: dict[str, float], margin: float = WEAK_MARGIN) -> dict[str, Any]:
    """The source's validation primary metric beside the constant baseline's, and whether it is weak."""
    metric = task.metric
    value, baseline = float(validation[metric]), float(constant_baseline(task)[metric])
    return {"task": task.name, "metric": metric, "validation": value, "constant_baseline": baseline,
            "margin": margin, "weak": value <= baseline + margin}


def train_adapter(setup: TaskSetup, adapter_config: AdapterConfig, trainer_config: TrainerConfig,
                  run: RunFolder) -> dict[str, Any]:
    """Train an adapter + head on ``setup.task``; write the adapter and metrics into ``run``."""
    started = time.perf_counter()
    task = setup.load_task()
    logger.info("task %s: %d train / %d validation / %d test examples", task.name, len(task.train),
                len(task.validation), len(task.test))
    backbone = load_encoder(setup.backbone)
    run.write_json("config.json", {
        "job": "adapters train", "setup": asdict(setup), "adapter": asdict(adapter_config),
        "trainer": asdict(trainer_config), "backbone": backbone.signature(), "task": task.describe(),
        "environment": environment(),
    })
    result = train_source(backbone.model, backbone, task, KIND, adapter_config, trainer_config,
                          run.path / "adapter", max_length=setup.max_length, pooling=setup.pooling)
    metrics = {**result.metrics, "wall_time_s": time.perf_counter() - started}
    if distributed.is_main_process():
        run.write_json("metrics.json", metrics)
        plot_training_curves(run.path / "train_log.jsonl", run.path / "training_curves.png", task.metric)
    return metrics
