"""The one training loop every plmkit method trains through, backed by DeepSpeed.

Why a thin loop over ``deepspeed.initialize`` and not ``transformers.Trainer``: the methods train
things that are not Hugging Face models (tiny LSTMs), need losses that see teachers and embedding
queues, and own their evaluation. A ``loss_fn(model, batch) -> loss`` contract serves all of them
with no subclassing, while DeepSpeed owns what is hard: ZeRO stages 0-3, bf16/fp16, gradient
accumulation and clipping, and checkpoints that restore exactly. What is left here is the loop:
rank-aware sampling, evaluation, early stopping, atomic checkpoints, exact resume and progress.

Losses follow :mod:`plmkit.losses` (a tensor, or named terms whose ``"loss"`` is the total; every term
is logged as a running mean); evaluators follow :mod:`plmkit.evaluation` (the best checkpoint is
selected on ``metric``, else on the evaluator's declared primary metric); the optimiser's groups and
the learning-rate schedule come from :mod:`plmkit.optim`.

Checkpoints are read back without executing anything (:mod:`plmkit.checkpoints`): RNG states in JSON,
DeepSpeed's files through the weights-only unpickler. A checkpoint counts as good only when its
trainable weights are finite (with a finite float32 norm) and a finite loss was computed from them;
a NaN stop names the last good one, points ``latest.json`` at it and removes those after it.

Launch: one process on CPU (gloo) or one GPU needs no launcher; ``deepspeed --num_gpus N`` or
``torchrun --nproc_per_node N`` run the same code data-parallel.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from plmkit import checkpoints as ckpt
from plmkit import distributed as dist
from plmkit.errors import PlmkitError, TrainerConfigError
from plmkit.evaluation import selection
from plmkit.io import atomic_write_json, save_tensors_atomic
from plmkit.losses import total_and_terms
from plmkit.optim import linear_schedule, param_groups, parse_lr_multipliers

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, torch.Tensor] | tuple[torch.Tensor, dict]"]
EvalFn = Callable[[nn.Module], dict[str, float]]

MAX_LEARNING_RATE = 10.0
"""Adam-type steps move each weight by about the learning rate; above 10 a run only diverges (and 1e38
overflows inside Adam), so larger values are refused at the door."""

# field -> (lowest, highest, lowest allowed itself, None allowed); all must be finite numbers.
_NUMERIC_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, MAX_LEARNING_RATE, False, False),
    "weight_decay": (0.0, 10.0, True, False),
    "warmup_ratio": (0.0, 1.0, True, False),
    "max_grad_norm": (0.0, 1e6, True, False),
    "epochs": (1, 1e6, True, False),
    "max_steps": (1, 1e12, True, True),
    "batch_size": (1, 1e7, True, False),
    "grad_accum_steps": (1, 1e6, True, False),
    "eval_every_steps": (1, 1e12, True, True),
    "early_stopping_patience": (1, 1e9, True, True),
    "keep_checkpoints": (1, 1e6, True, False),
    "log_every_steps": (1, 1e12, True, False),
    "num_workers": (0, 1024, True, False),
    "seed": (0, 2**63 - 1, True, False),
}
_INTEGER_FIELDS = ("epochs", "max_steps", "batch_size", "grad_accum_steps", "eval_every_steps",
                   "early_stopping_patience", "keep_checkpoints", "log_every_steps", "num_workers", "seed")


class NonFiniteLossError(PlmkitError, RuntimeError):
    """Raised when the loss (or the weights) become NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainerConfig:
    """Everything the loop needs; each field maps to a CLI flag of the same name."""

    output_dir: str = "runs/train"
    """Folder for checkpoints, the best weights and the training log."""
    epochs: int = 3
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps."""
    batch_size: int = 32
    """Micro-batch per process; the global batch is batch_size x grad_accum_steps x processes."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated before each optimiser step."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate, in (0, 10]."""
    weight_decay: float = 0.0
    """AdamW weight decay; never applied to biases and norm weights."""
    lr_multipliers: str = ""
    """Per-parameter learning-rate factors, 'PATTERN=FACTOR,...': parameters whose name matches a glob PATTERN
    (e.g. '*time_corrections*=10') train at FACTOR x the learning rate, under the same schedule; the first
    matching pattern wins, and a pattern that matches no trainable parameter is an error."""
    warmup_ratio: float = 0.0
    """Fraction of the optimiser steps with a linear warm-up; the rest decays linearly to zero."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it (DeepSpeed's own default is 1.0)."""
    precision: str = "fp32"
    """fp32, bf16, or fp16 (fp16 on GPU only)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    eval_every_steps: int | None = None
    """Evaluate (and checkpoint) every k optimiser steps; None evaluates at each epoch's end."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of ``metric``."""
    metric: str | None = None
    """Evaluation key that selects the best checkpoint; None takes the first key returned."""
    greater_is_better: bool = True
    seed: int = 42
    save_checkpoints: bool = True
    """Write a resumable checkpoint at every evaluation."""
    keep_checkpoints: int = 1
    """How many resumable checkpoints to keep (the newest ones)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` when there is one."""
    load_best_at_end: bool = True
    """Put the best evaluated weights back into the model when training ends."""
    log_every_steps: int = 10
    progress: bool = True
    """Show a progress bar (main process only)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    cpu_shm_comm: bool = False
    """Use DeepSpeed's shared-memory all-reduce on CPU (needs a one-off C++ compile)."""
    compile: bool = False
    """Compile the model with torch.compile before training (first steps are slower while it compiles)."""

    def __post_init__(self) -> None:
        for name in _NUMERIC_RANGES:
            _check_number(name, getattr(self, name))
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise TrainerConfigError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise TrainerConfigError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "keep_checkpoints", "log_every_steps"):
            if getattr(self, name) < 1:
                raise TrainerConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainerConfigError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainerConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm < 0:
            raise TrainerConfigError("max_grad_norm must be >= 0 (0 disables clipping)")
        parse_lr_multipliers(self.lr_multipliers)


def _check_number(name: str, value: Any) -> None:
    """One ``ConfigError`` line naming the flag when a numeric setting is not a sane finite number."""
    low, high, low_ok, none_ok = _NUMERIC_RANGES[name]
    flag = "--" + name.replace("_", "-")
    if value is None and none_ok:
        return
    integer = name in _INTEGER_FIELDS
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        what = "a whole number" if integer else "a finite number"
        raise TrainerConfigError(f"{flag} must be {what}{' or None' if none_ok else ''}, got {value!r}")
    if value < low or (value == low and not low_ok) or value > high:
        bracket = "[" if low_ok else "("
        raise TrainerConfigError(f"{flag} must be in {bracket}{low:g}, {high:g}], got {value!r}")


@dataclass
class TrainResult:
    global_step: int
    epochs_completed: float
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    train_time_s: float
    samples_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over ``train_data``.

    Only parameters with ``requires_grad`` reach the optimiser, so a method freezes what it
    wants frozen before handing the model over. ``evaluate_fn(model)`` returns a dict of metrics;
    it runs on every rank (ZeRO-3 needs all ranks in each forward pass) and must give the same
    numbers everywhere.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Sequence[Any],
        config: TrainerConfig,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        evaluate_fn: EvalFn | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.train_data = train_data
        self.config = config
        self.collate_fn = collate_fn
        self.evaluate_fn = evaluate_fn
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.engine = None

    # ----------------------------------------------------------------- set-up
    def _check_setup(self, world: int) -> int:
        cfg = self.config
        if cfg.precision == "fp16" and not torch.cuda.is_available():
            raise TrainerConfigError("fp16 needs a GPU; on CPU use --precision bf16 or fp32")
        if not any(p.requires_grad for p in self.model.parameters()):
            raise TrainerConfigError("the model has no trainable parameters (nothing requires grad)")
        scalars = [name for name, p in self.model.named_parameters() if p.ndim == 0]
        if scalars:  # DeepSpeed views every parameter as bytes to broadcast it, which a 0-d tensor cannot do
            raise TrainerConfigError(
                f"parameters {', '.join(scalars[:5])} are 0-dimensional; DeepSpeed cannot broadcast them. "
                "Give them shape (1,) (e.g. nn.Parameter(torch.tensor([value])))")
        global_micro = cfg.batch_size * world
        micro_per_epoch = len(self.train_data) // global_micro
        micro_per_epoch -= micro_per_epoch % cfg.grad_accum_steps
        if micro_per_epoch == 0:
            raise TrainerConfigError(
                f"the training set has {len(self.train_data)} examples, fewer than one global batch "
                f"({cfg.batch_size} x {cfg.grad_accum_steps} accumulation x {world} processes); "
                "lower --batch_size or --grad_accum_steps, or add data"
            )
        return micro_per_epoch

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters, grouped by :func:`plmkit.optim.param_groups`."""
        cfg = self.config
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups, self._group_layout = param_groups(named, cfg.learning_rate, cfg.weight_decay, cfg.lr_multipliers)
        return torch.optim.AdamW(groups, lr=cfg.learning_rate)  # _group_layout: what a checkpoint must match

    def deepspeed_config(self, world: int) -> dict[str, Any]:
        cfg = self.config
        return {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": cfg.grad_accum_steps,
            "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.precision == "bf16"},
            "fp16": {"enabled": cfg.precision == "fp16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def _initialize(self, total_steps: int, world: int) -> None:
        deepspeed = dist.import_deepspeed(self.config.cpu_shm_comm)
        optimizer = self._optimizer()
        warmup = int(round(self.config.warmup_ratio * total_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup))
        # torch.compile wraps the same parameters; names and saved weights stay those of self.model.
        module = torch.compile(self.model) if self.config.compile else self.model
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler,
            config=self.deepspeed_config(world), dist_init_required=False,
        )

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int, micro_per_epoch: int, world: int, rank: int) -> list[list[int]]:
        """This rank's micro-batches for one epoch: global batches split across ranks.

        The permutation depends only on (seed, epoch), so a resumed run and any world size see
        the same global batches in the same order.
        """
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_data), generator=generator).tolist()
        size = self.config.batch_size
        batches = []
        for step in range(micro_per_epoch):
            start = step * size * world + rank * size
            batches.append(order[start:start + size])
        return batches

    def _loader(self, batches: list[list[int]]) -> DataLoader:
        return DataLoader(
            self.train_data, batch_sampler=batches, collate_fn=self.collate_fn,
            num_workers=self.config.num_workers, generator=torch.Generator(),
        )

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        cfg = self.config
        dist.init_process_group(cfg.cpu_shm_comm)
        world, rank = dist.world_size(), dist.rank()
        micro_per_epoch = self._check_setup(world)
        steps_per_epoch = micro_per_epoch // cfg.grad_accum_steps
        total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        seed_everything(cfg.seed + rank)
        self._initialize(total_steps, world)
        state = self._fresh_state()
        if cfg.resume:
            state = self._resume(state)
        return self._run(state, micro_per_epoch, total_steps, world, rank)

    def _fresh_state(self) -> dict[str, Any]:
        return {"epoch": 0, "micro_in_epoch": 0, "global_step": 0, "best_metric": None,
                "best_step": None, "bad_evals": 0, "history": [], "train_time_s": 0.0,
                "samples_seen": 0, "stopped_early": False, "last_checkpoint": None,
                "good_checkpoint": None}

    def _run(self, state: dict, micro_per_epoch: int, total_steps: int, world: int, rank: int) -> TrainResult:
        cfg = self.config
        bar = self._progress_bar(total_steps, state["global_step"])
        started, running, running_count = time.perf_counter() - state["train_time_s"], {}, 0
        device = next(self.engine.module.parameters()).device
        done = state["global_step"] >= total_steps or state["stopped_early"]
        while not done:
            epoch, first = state["epoch"], state["micro_in_epoch"]
            batches = self._epoch_batches(epoch, micro_per_epoch, world, rank)
            for micro, batch in enumerate(self._loader(batches[first:]), start=first):
                terms = self._micro_step(move_to_device(batch, device), state)
                running_count += 1
                for name, value in terms.items():
                    running[name] = running.get(name, 0.0) + value
                state["samples_seen"] += cfg.batch_size * world
                if (micro + 1) % cfg.grad_accum_steps:
                    continue
                state["global_step"] += 1
                state["micro_in_epoch"] = micro + 1
                state["train_time_s"] = time.perf_counter() - started
                means = {name: total / running_count for name, total in running.items()}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**{name: f"{value:.4f}" for name, value in means.items()},
                                    lr=f"{self.engine.get_lr()[0]:.2e}",
                                    samples_s=f"{state['samples_seen'] / max(state['train_time_s'], 1e-9):.1f}")
                if state["global_step"] % cfg.log_every_steps == 0:
                    self._log({"step": state["global_step"], "epoch": epoch, **means,
                               "lr": self.engine.get_lr()[0]})
                    running, running_count = {}, 0
                finished = state["global_step"] >= total_steps
                epoch_end = micro + 1 == micro_per_epoch
                if epoch_end:
                    state["epoch"], state["micro_in_epoch"] = epoch + 1, 0
                if cfg.eval_every_steps:
                    due = state["global_step"] % cfg.eval_every_steps == 0 or finished
                else:
                    due = epoch_end or finished
                if due:
                    self._evaluate_and_checkpoint(state)
                if finished or state["stopped_early"]:
                    break
            done = state["global_step"] >= total_steps or state["stopped_early"]
        if bar is not None:
            bar.close()
        return self._finish(state, micro_per_epoch // cfg.grad_accum_steps)

    def _micro_step(self, batch: Any, state: dict) -> dict[str, float]:
        """One forward/backward; returns every named loss term as a float (``loss`` is the total)."""
        self.engine.train()
        output = self.loss_fn(self.engine, batch)
        if isinstance(output, tuple):  # the earlier (loss, float logs) form
            loss, logs = output
            terms = {**{k: float(v) for k, v in logs.items()}, "loss": loss}
        else:
            loss, terms = total_and_terms(output)
        self._check_finite(loss, state)
        # A finite loss computed from the newest checkpoint's weights confirms that checkpoint as good.
        if state["last_checkpoint"] != state["good_checkpoint"]:
            state["good_checkpoint"] = state["last_checkpoint"]
        self.engine.backward(loss)
        self.engine.step()
        return {name: float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                for name, value in terms.items()}

    def _check_finite(self, loss: torch.Tensor, state: dict) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
        if dist.world_size() > 1:
            bad = bad.to(loss.device)
            torch.distributed.all_reduce(bad)
        if bad.item() > 0:
            self._stop_non_finite(f"the loss became {float(loss.detach())}", state)

    def _stop_non_finite(self, what: str, state: dict) -> None:
        """Point latest.json at the last good checkpoint, drop newer ones, and raise naming it."""
        good = state["good_checkpoint"]
        if dist.is_main_process() and self.checkpoint_root.is_dir():
            for folder in self.checkpoint_root.glob("step-*"):
                if good is None or folder.name > Path(good).name:
                    shutil.rmtree(folder, ignore_errors=True)
            pointer = self.checkpoint_root / "latest.json"
            if good is None:
                pointer.unlink(missing_ok=True)
            else:
                step = int(Path(good).name.removeprefix("step-"))
                atomic_write_json(pointer, {"tag": Path(good).name, "global_step": step})
        dist.barrier()
        last = good or "none (no checkpoint had finite weights and a finite loss after it)"
        raise NonFiniteLossError(
            f"{what} at optimiser step {state['global_step']} (epoch {state['epoch']}); training stopped "
            f"before updating the weights. Last good checkpoint: {last}. Try a lower --learning-rate, "
            "--precision fp32, or check the data for empty or extreme inputs."
        )

    # ------------------------------------------------------------ evaluation
    def _evaluate_and_checkpoint(self, state: dict) -> None:
        if self.evaluate_fn is not None:
            self.engine.eval()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.evaluate_fn(self.engine.module).items()}
            record = {"step": state["global_step"], "epoch": state["epoch"], **metrics}
            state["history"].append(record)
            self._log({"eval": record})
            self._update_best(metrics, state)
        if self.config.save_checkpoints:
            self._save_checkpoint(state)

    def _update_best(self, metrics: dict[str, float], state: dict) -> None:
        cfg = self.config
        key, greater = selection(self.evaluate_fn, cfg.metric, cfg.greater_is_better, next(iter(metrics), None))
        if key not in metrics:
            raise TrainerConfigError(f"metric {key!r} is not among the evaluation results {sorted(metrics)}")
        value, best = metrics[key], state["best_metric"]
        improved = best is None or (value > best if greater else value < best)
        if improved:
            state["best_metric"], state["best_step"], state["bad_evals"] = value, state["global_step"], 0
            self._save_best()
        else:
            state["bad_evals"] += 1
            patience = cfg.early_stopping_patience
            state["stopped_early"] = patience is not None and state["bad_evals"] >= patience

    def _trainable_items(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _gathered(self, params: list[nn.Parameter], modifier_rank: int | None = None):
        import deepspeed

        return deepspeed.zero.GatheredParameters(
            params, modifier_rank=modifier_rank, enabled=self.config.zero_stage == 3
        )

    def _save_best(self) -> None:
        items = self._trainable_items()
        with self._gathered([p for _, p in items]):
            tensors = {name: p.detach().float().cpu().clone() for name, p in items}
        if dist.is_main_process():
            save_tensors_atomic(tensors, self.output_dir / "best.safetensors")
        self._best_in_memory = tensors

    def _load_best(self) -> None:
        tensors = getattr(self, "_best_in_memory", None)
        if tensors is None:
            return
        items = self._trainable_items()
        with self._gathered([p for _, p in items], modifier_rank=0), torch.no_grad():
            for name, param in items:
                param.copy_(tensors[name].to(param.dtype))

    # ----------------------------------------------------------- checkpoints
    def _weights_sane(self) -> bool:
        """Every trainable weight finite, with a finite float32 norm, on every rank."""
        items = self._trainable_items()
        with self._gathered([p for _, p in items]):
            sane = ckpt.weights_are_sane(p for _, p in items)
        flag = torch.tensor([0.0 if sane else 1.0])
        if dist.world_size() > 1:
            flag = flag.to(next(self.model.parameters()).device)
            torch.distributed.all_reduce(flag)
        return flag.item() == 0

    def _save_checkpoint(self, state: dict) -> None:
        if not self._weights_sane():
            self._stop_non_finite("the trainable weights overflowed (a value or their norm is not finite)",
                                  state)
        tag = f"step-{state['global_step']:08d}"
        incoming = self.checkpoint_root / ".incoming"
        final = self.checkpoint_root / tag
        state["last_checkpoint"] = str(final)
        # Frozen weights never change, so checkpoints hold only what trains (adapters stay small).
        self.engine.save_checkpoint(str(incoming), tag=tag, client_state={"plmkit": state},
                                    save_latest=False, exclude_frozen_parameters=True)
        ckpt.save_rng(incoming / tag / f"rng_rank{dist.rank()}.json")
        dist.barrier()
        if dist.is_main_process():
            atomic_write_json(incoming / tag / "optimizer_groups.json", self._group_layout)
            if final.exists():
                shutil.rmtree(final)
            os.replace(incoming / tag, final)
            shutil.rmtree(incoming, ignore_errors=True)
            atomic_write_json(self.checkpoint_root / "latest.json", {"tag": tag, "global_step": state["global_step"]})
            self._prune_checkpoints(keep={tag, Path(state["good_checkpoint"] or "").name})
        dist.barrier()

    def _prune_checkpoints(self, keep: set[str]) -> None:
        """Keep the newest ``keep_checkpoints`` plus ``keep`` (the newest and the last confirmed good)."""
        tags = sorted(p.name for p in self.checkpoint_root.glob("step-*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.config.keep_checkpoints)]:
            if old not in keep:
                shutil.rmtree(self.checkpoint_root / old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoint_root / "latest.json"
        if not pointer.exists():
            return None
        path = self.checkpoint_root / json.loads(pointer.read_text())["tag"]
        return path if path.is_dir() else None

    def _resume(self, state: dict) -> dict:
        latest = self.latest_checkpoint()
        if latest is None:
            logger.info("no checkpoint in %s; starting from scratch", self.checkpoint_root)
            return state
        rng_file = latest / f"rng_rank{dist.rank()}.json"
        if not rng_file.exists():
            raise TrainerConfigError(
                f"{latest} has no {rng_file.name}: it was written by fewer processes than this run has, or "
                "by an older plmkit; resume with the same number of processes, or start afresh"
            )
        self._check_group_layout(latest)
        with ckpt.weights_only_loading():
            _, client = self.engine.load_checkpoint(str(self.checkpoint_root), tag=latest.name,
                                                    load_module_strict=False)
        if client is None or "plmkit" not in client:
            raise TrainerConfigError(f"{latest} is not a plmkit checkpoint (no loop state inside)")
        state = {**self._fresh_state(), **client["plmkit"]}
        ckpt.load_rng(rng_file)
        if dist.is_main_process():
            ckpt.trim_log(self.output_dir / "train_log.jsonl", state["global_step"])
        best = self.output_dir / "best.safetensors"
        if best.exists():
            from safetensors.torch import load_file

            self._best_in_memory = load_file(str(best))
        logger.info("resumed from %s at step %d", latest, state["global_step"])
        return state

    def _check_group_layout(self, latest: Path) -> None:
        """Refuse a checkpoint whose optimiser groups differ from this run's: torch would fail deep inside on
        another group count, and silently keep the checkpoint's rates on the same count."""
        saved_file = latest / "optimizer_groups.json"
        if not saved_file.exists():  # written by an older plmkit
            return
        saved = json.loads(saved_file.read_text())
        if saved != self._group_layout:
            raise TrainerConfigError(
                f"{latest} was trained with optimiser groups {saved}; this run's settings give "
                f"{self._group_layout}. --lr-multipliers, --weight-decay or the trainable parameters differ: "
                "resume with the checkpoint's settings, or start afresh in another output folder")

    # --------------------------------------------------------------- output
    def _progress_bar(self, total: int, initial: int):
        if not (self.config.progress and dist.is_main_process()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def _log(self, record: dict[str, Any]) -> None:
        if not dist.is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "train_log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _finish(self, state: dict, steps_per_epoch: int) -> TrainResult:
        if self.config.load_best_at_end and self.evaluate_fn is not None:
            self._load_best()
        elapsed = state["train_time_s"]
        return TrainResult(
            global_step=state["global_step"],
            epochs_completed=state["global_step"] / max(1, steps_per_epoch),
            best_metric=state["best_metric"], best_step=state["best_step"],
            stopped_early=state["stopped_early"], train_time_s=elapsed,
            samples_per_s=state["samples_seen"] / elapsed if elapsed > 0 else math.nan,
            history=state["history"],
        )
