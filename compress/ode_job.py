"""The job behind ``plmkit compress ode``: a step-robust shared-layer model against layer dropping.

Fine-tune the dense encoder on the task (the reference and the teacher), build the shared-layer ODE
model from it, fine-tune that with step counts drawn per batch (and distillation from the dense model),
then measure every inference step count: latency, FLOPs, task metric. The baseline spends the same
compute by keeping the first n layers of the fine-tuned dense model (``plmkit.layers.keep_layers``) and
fine-tuning it the same way. Writes ``ode_table.json``, ``accuracy_latency.png``, ``metrics.json`` and
the model (``model/``, reloadable with any step count).

Latency is measured last, for every row together: ``--latency-rounds`` rounds, each timing one forward
of every model (and step count) in turn on the same batch with ``forward_latency_ms``; a row's latency
is the median over rounds. Interleaving puts every row under the same load on a shared machine, so
the ratios between rows are comparable even when the absolute times drift.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit import distributed
from plmkit.anatomy import locate
from plmkit.backbones import DEFAULT_ENCODER
from plmkit.compress.jobs import forward_latency_ms, latency_batch
from plmkit.compress.ode import ODEClassifier, ODEConfig, parse_steps, trajectory_distillation
from plmkit.compress.ode_build import build_ode_encoder, save_ode_model
from plmkit.errors import ConfigError
from plmkit.flops import count_flops
from plmkit.io import save_tensors_atomic
from plmkit.jobs import DataArgs, finetune_and_evaluate, open_task_job
from plmkit.layers import keep_layers
from plmkit.losses import DistillationLoss
from plmkit.metrics import compute_metrics
from plmkit.models import build_classifier
from plmkit.optim import parse_lr_multipliers
from plmkit.report import plot_labelled_lines
from plmkit.runs import RunFolder
from plmkit.textclf import TaskData
from plmkit.trainer import TrainerConfig

logger = logging.getLogger("plmkit")


@dataclass
class ODESetup(DataArgs):
    """Which model and task, how the shared model and the baseline are trained, and how they are timed."""

    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id (--model is an alias)."""
    task: str = "rotten-tomatoes"
    """A built-in task or a data folder to fine-tune and evaluate on."""
    pooling: str = "mean"
    """Head pooling: 'mean' or 'cls'."""
    dense_epochs: int | None = None
    """Epochs of the dense fine-tuning (default: --epochs; 0: no fine-tuning and no teacher)."""
    ode_epochs: int | None = None
    """Epochs of the shared model's fine-tuning (default: --epochs)."""
    ode_learning_rate: float | None = None
    """Learning rate of the shared model's fine-tuning (default: --learning-rate)."""
    ode_lr_multipliers: str = ""
    """Learning-rate factors for parts of the shared model, 'PATTERN=FACTOR,...' on parameter names (e.g.
    '*time_corrections*=10'); the trainer's --lr-multipliers, for the shared model's fine-tuning only."""
    distill: float = 0.5
    """Weight of distillation from the fine-tuned dense model for the shared model and the baseline (0: none)."""
    distill_temperature: float = 2.0
    """Softmax temperature of the distillation term."""
    distill_trajectory: float = 0.0
    """Weight of trajectory distillation: the shared model's state at each integer time a step ends on,
    layer-normalised, matched to the dense model's layer at that time; the baseline's layer j likewise to
    the dense layer jT/n (0: none)."""
    eval_steps: str = "auto"
    """Inference step counts to measure: 'auto' (T, T/2, T/4) or a comma list, e.g. '6,3,2,1'."""
    baseline: bool = True
    """Also measure the layer-dropping baseline at the same compute (first n layers of the dense model)."""
    baseline_epochs: int | None = None
    """Epochs of fine-tuning each layer-dropped model (default: --epochs; 0: drop only)."""
    latency_batch: int = 32
    """Sequences per batch when timing the forward pass and counting FLOPs."""
    latency_tokens: int = 64
    """Tokens per sequence when timing the forward pass and counting FLOPs."""
    latency_rounds: int = 7
    """Interleaved timing rounds (one forward of every row per round); a row's latency is their median."""
    dense_cache: str | None = None
    """A weights file for the fine-tuned dense model: loaded when it exists (no dense fine-tuning), else written."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        for name in ("dense_epochs", "ode_epochs", "baseline_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"--distill must be in [0, 1], got {self.distill}")
        if self.distill_trajectory < 0:
            raise ConfigError(f"--distill-trajectory must be >= 0, got {self.distill_trajectory}")
        if self.latency_batch < 1 or self.latency_tokens < 1 or self.latency_rounds < 1:
            raise ConfigError("--latency-batch, --latency-tokens and --latency-rounds must be >= 1")
        parse_lr_multipliers(self.ode_lr_multipliers, "--ode-lr-multipliers")  # refused before any training


def _epochs(value: int | None, trainer: TrainerConfig) -> int:
    return trainer.epochs if value is None else value


def _scores(model: nn.Module, data: TaskData, batch: dict[str, Any], metric: str) -> dict[str, Any]:
    """FLOPs of one forward of ``batch`` and the metric on both splits; the predictions under ``"predictions"``."""
    row: dict[str, Any] = {"gflops": count_flops(model, **batch) / 1e9, "predictions": {}}
    for split in ("validation", "test"):
        predicted, labels = data.predict(model, split)
        row[split] = compute_metrics(predicted, labels, is_regression=data.task.is_regression)[metric]
        row["predictions"][split] = predicted.tolist()
    return row


def _ode_rows(model: ODEClassifier, steps: tuple[int, ...], data: TaskData, batch: dict[str, Any],
              metric: str) -> tuple[list[dict[str, Any]], list[tuple[nn.Module, int | None]]]:
    rows, timed = [], []
    for n in steps:
        model.set_steps(n)
        row = _scores(model, data, batch, metric)
        rows.append({"model": f"shared ODE ({model.encoder.solver})", "steps": n,
                     "evals": model.encoder.last_evals, **row})
        timed.append((model, n))
        logger.info("ODE %d steps: validation %.4f, test %.4f", n, row["validation"], row["test"])
    model.set_steps(None)
    return rows, timed


def _dense_distillation(dense: nn.Module, setup: ODESetup, hidden_weight: float = 0.0) -> DistillationLoss:
    """(1 - distill) CE + distill T^2 KL, plus hidden_weight times the uniformly mapped hidden-state term."""
    return DistillationLoss.mixed(dense, setup.distill, temperature=setup.distill_temperature,
                                  hidden_weight=hidden_weight, layer_map="uniform")


def _baseline_rows(dense: nn.Module, budgets: list[int], setup: ODESetup, trainer: TrainerConfig, run: RunFolder,
                   data: TaskData, batch: dict[str, Any], metric: str,
                   teacher: bool) -> tuple[list[dict[str, Any]], list[tuple[nn.Module, int | None]]]:
    depth = len(locate(dense).layers)
    rows = [{"model": "dense", "steps": depth, "evals": depth, **_scores(dense, data, batch, metric)}]
    timed: list[tuple[nn.Module, int | None]] = [(dense, None)]
    epochs = _epochs(setup.baseline_epochs, trainer)
    for n in budgets:
        model = keep_layers(copy.deepcopy(dense), list(range(n)))
        model.requires_grad_(True).train()
        if epochs:
            # the same signals as the shared model: logits, and with --distill-trajectory its layer j matched
            # to the dense layer at the same depth, jT/n (the trajectory's points)
            loss = _dense_distillation(dense, setup, hidden_weight=setup.distill_trajectory) if teacher else None
            finetune_and_evaluate(model, data, replace(trainer, epochs=epochs), run.path / f"drop-{n}", loss=loss)
        rows.append({"model": "layer dropping", "steps": n, "evals": n, **_scores(model, data, batch, metric)})
        timed.append((model, None))
        logger.info("first %d layers: validation %.4f, test %.4f", n, rows[-1]["validation"], rows[-1]["test"])
    return rows, timed


def time_rows(rows: list[dict[str, Any]], timed: list[tuple[nn.Module, int | None]], batch: dict[str, Any],
              rounds: int) -> None:
    """Set ``row['latency_ms']`` (median over interleaved rounds) and ``row['latency_runs_ms']`` in place.

    ``timed[i]`` is the model of ``rows[i]`` and its step count (``None``: not an ODE model). Each round
    times one forward of every row in turn (``forward_latency_ms``: a warm-up pass, then one timed pass).
    """
    runs: list[list[float]] = [[] for _ in rows]
    with torch.inference_mode():
        for _ in range(rounds):
            for i, (model, steps) in enumerate(timed):
                if steps is not None:
                    model.set_steps(steps)
                runs[i].append(forward_latency_ms(model, batch, repeats=1))
    for row, (model, steps), times in zip(rows, timed, runs, strict=True):
        if steps is not None:
            model.set_steps(None)
        row["latency_ms"] = statistics.median(times)
        row["latency_runs_ms"] = [round(t, 2) for t in times]


def dense_data_settings(setup: ODESetup, data: TaskData, backbone: str) -> dict[str, Any]:
    """The data side of what a cached dense model was made with: backbone, task rows, length, pooling."""
    return {"backbone": backbone, "task": data.task.describe(), "rows": data.task.fingerprint(),
            "max_length": setup.max_length, "pooling": setup.pooling, "data_seed": setup.data_seed}


def read_dense_settings(cache: Path) -> dict[str, Any] | None:
    """What a dense cache file records it was made with (its safetensors metadata); None: nothing recorded."""
    from safetensors import safe_open

    with safe_open(cache, "pt") as handle:
        return json.loads((handle.metadata() or {}).get("plmkit_dense", "null"))


def _dense(dense: nn.Module, setup: ODESetup, data: TaskData, trainer: TrainerConfig, run: RunFolder,
           epochs: int, backbone: str) -> dict[str, Any] | None:
    """Fine-tune ``dense`` (or load it from ``setup.dense_cache``); its scores, or None without training.

    The cache file records what the dense model was trained with (backbone, task data, fine-tuning
    settings, in its safetensors metadata); a file made with anything else is refused, not reused.
    """
    cache = Path(setup.dense_cache) if setup.dense_cache else None
    made_with = {**dense_data_settings(setup, data, backbone), "epochs": epochs,
                 "learning_rate": trainer.learning_rate, "batch_size": trainer.batch_size, "seed": trainer.seed}
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        stored = read_dense_settings(cache)
        current = json.loads(json.dumps(made_with))  # as it would be stored
        if stored != current:
            differ = sorted(k for k in current if not stored or stored.get(k) != current.get(k))
            raise ConfigError(f"--dense-cache {cache} was made with other settings ({', '.join(differ) or 'none recorded'}"
                              "); pass another --dense-cache path or delete the file to fine-tune anew")
        dense.load_state_dict(load_file(cache))
        logger.info("dense model loaded from %s (no fine-tuning)", cache)
        return {"loaded_from": str(cache), "validation": data.evaluate(dense, "validation"),
                "test": data.evaluate(dense, "test")}
    if not epochs:
        return None
    result = finetune_and_evaluate(dense, data, replace(trainer, epochs=epochs), run.path / "dense")
    if cache is not None and distributed.is_main_process():
        save_tensors_atomic({k: v.contiguous() for k, v in dense.state_dict().items()}, cache,
                            metadata={"plmkit_dense": json.dumps(made_with)})
    return result


def ode_compress(setup: ODESetup, config: ODEConfig, trainer: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    """Build, train and measure the shared ODE model on ``setup.task``; compare with layer dropping."""
    started = time.perf_counter()
    task, backbone, data = open_task_job("compress ode", setup, trainer, run, ode=config)
    metric = task.metric
    dense = build_classifier(backbone.model, task.num_labels, pooling=setup.pooling)
    metrics: dict[str, Any] = {"model": backbone.name, "task": task.name, "metric": metric}
    dense_result = _dense(dense, setup, data, trainer, run, _epochs(setup.dense_epochs, trainer), backbone.name)
    if dense_result is not None:
        metrics["dense"] = dense_result
    model = ODEClassifier(build_ode_encoder(dense.encoder, config), copy.deepcopy(dense.head))
    model.encoder.schedule.reseed(trainer.seed)
    depth = model.encoder.config.depth
    metrics["ode_config"] = {k: v for k, v in asdict(model.encoder.config).items() if k != "extra"}
    teacher = bool((setup.distill or setup.distill_trajectory) and dense_result is not None)
    layers = len(locate(dense).layers)
    if setup.distill_trajectory:
        if dense_result is None:
            raise ConfigError("--distill-trajectory needs the fine-tuned dense model as teacher: "
                              "set --dense-epochs > 0 or a --dense-cache file")
        if depth != layers:
            raise ConfigError(f"--distill-trajectory matches time t to the dense model's layer t: --depth {depth} "
                              f"must equal its {layers} layers (or leave --depth unset)")
        loss = trajectory_distillation(dense, setup.distill, setup.distill_temperature, setup.distill_trajectory)
    else:
        loss = _dense_distillation(dense, setup) if teacher else None
    lr = setup.ode_learning_rate or trainer.learning_rate
    metrics["ode"] = finetune_and_evaluate(
        model, data, replace(trainer, epochs=_epochs(setup.ode_epochs, trainer), learning_rate=lr,
                             lr_multipliers=setup.ode_lr_multipliers), run.path / "ode",
        loss=loss)
    batch = latency_batch(backbone.tokenizer, setup.latency_batch, setup.latency_tokens)
    steps = parse_steps(setup.eval_steps, depth)
    rows, timed = _ode_rows(model, steps, data, batch, metric)
    if setup.baseline:
        budgets = sorted({row["evals"] for row in rows if row["evals"] < layers}, reverse=True)
        more_rows, more_timed = _baseline_rows(dense, budgets, setup, trainer, run, data, batch, metric, teacher)
        rows, timed = rows + more_rows, timed + more_timed
    time_rows(rows, timed, batch, setup.latency_rounds)
    predictions = [row.pop("predictions") for row in rows]
    metrics["table"] = rows
    metrics["latency_batch"] = [setup.latency_batch, setup.latency_tokens]
    metrics["latency_rounds"] = setup.latency_rounds
    if distributed.is_main_process():
        run.write_json("ode_table.json", {"task": task.name, "metric": metric, "rows": rows})
        # per row, in the table's order: what it predicted on each split, for paired comparisons of rows
        run.write_json("predictions.json", {
            "labels": {split: [f["labels"].item() for f in getattr(data, split)] for split in ("validation", "test")},
            "rows": [{"model": row["model"], "steps": row["steps"], **pred} for row, pred in zip(rows, predictions,
                                                                                              strict=True)]})
        _plot(rows, run, metric, task.name)
        save_ode_model(run.path / "model", model, backbone.tokenizer,
                       extra={"label_names": task.label_names, "task": task.describe(), "backbone": backbone.name,
                              "max_length": setup.max_length})
        metrics["model_dir"] = str(run.path / "model")
    metrics["wall_time_s"] = time.perf_counter() - started
    run.write_json("metrics.json", metrics)
    return metrics


def _plot(rows: list[dict[str, Any]], run: RunFolder, metric: str, task: str) -> None:
    series: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        unit = "steps" if row["model"].startswith("shared") else "layers"
        series.setdefault(row["model"], []).append((row["latency_ms"], row["test"], f"{row['steps']} {unit}"))
    plot_labelled_lines(series, run.path / "accuracy_latency.png", xlabel="forward latency (ms)",
                        ylabel=f"test {metric}", title=f"{task}: accuracy vs latency")
