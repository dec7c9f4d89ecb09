"""Job plumbing every family shares: the data arguments, fine-tune-and-evaluate, and the CLI run wrapper.

A job is ``work(trainer_config, run) -> metrics``: it resolves its backbone and data, trains through
``plmkit.trainer`` and writes its run folder. ``run_job`` is the one CLI wrapper around it: it opens the
run folder (refusing to mix two runs in one folder), logs into ``run.log`` (a failure is written there
too), runs the job and prints its summary once, on the main process.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError

MAX_LENGTH_LIMIT = 1_000_000
"""No tokenizer has a longer context; larger values are typos (the model's own limit is checked later)."""


@dataclass
class DataArgs:
    """How a job reads its task and feeds text to the model; every job's setup inherits these fields."""

    text_fields: str | None = None
    """Text column(s) of a user data set, comma-separated for pairs (default: detected)."""
    label_field: str | None = None
    """Label column of a user data set (default: 'label')."""
    task_type: str | None = None
    """'classification' or 'regression' for a user data set (default: detected)."""
    max_length: int = 128
    """Tokens per example after truncation (at most the model's position limit)."""
    max_train_samples: int | None = None
    """Subsample the training split (seeded); 0 or none uses every example."""
    max_eval_samples: int | None = None
    """Subsample the validation and test splits (seeded); 0 or none uses every example."""
    data_seed: int = 0
    """Seed of the train/validation/test split and of subsampling."""

    def __post_init__(self) -> None:
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int):
            raise ConfigError(f"--max-length must be a whole number of tokens, got {self.max_length!r}")
        if not 1 <= self.max_length <= MAX_LENGTH_LIMIT:
            raise ConfigError(f"--max-length must be between 1 and the model's position limit (e.g. 512), "
                              f"got {self.max_length}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be >= 0 (0 uses every example), got {value}")
            if value == 0:
                setattr(self, name, None)  # one meaning everywhere: 0 is "all"
        if self.task_type not in (None, "classification", "regression"):
            raise ConfigError(f"--task-type must be 'classification' or 'regression', got {self.task_type!r}")
        if self.data_seed < 0:
            raise ConfigError(f"--data-seed must be >= 0, got {self.data_seed}")

    def fields(self) -> tuple[str, ...] | None:
        return tuple(f.strip() for f in self.text_fields.split(",") if f.strip()) if self.text_fields else None

    def load(self, spec: str, *, max_train_samples: int | None = None, max_eval_samples: int | None = None,
             **kwargs: Any):
        """Load task ``spec`` with these settings; a sample limit given here overrides the field (0: all)."""
        from plmkit.tasks import load_task

        train = self.max_train_samples if max_train_samples is None else sample_limit(max_train_samples)
        evaluation = self.max_eval_samples if max_eval_samples is None else sample_limit(max_eval_samples)
        return load_task(spec, text_fields=self.fields(), label_field=self.label_field, task_type=self.task_type,
                         seed=self.data_seed, max_train_samples=train, max_eval_samples=evaluation, **kwargs)


def sample_limit(value: int | None) -> int | None:
    """0 or None -> None (every example); a positive count as it is; negative is an error."""
    if value is not None and value < 0:
        raise ConfigError(f"a sample count must be >= 0 (0 uses every example), got {value}")
    return value or None


def finetune_and_evaluate(model: Any, data: Any, trainer: Any, folder: str | Path | None = None, *,
                          loss: Callable | None = None, regularizer: Callable | None = None) -> dict[str, Any]:
    """Train what in ``model`` requires grad on ``data`` through the one trainer, then score both splits.

    Selection uses the task's primary metric. Returns ``{"train": ..., "validation": ..., "test": ...}``;
    ``model`` ends in float32 with the best validation weights.
    """
    from plmkit.textclf import classification_loss, train_classifier

    config = replace(trainer, output_dir=str(folder), metric=None) if folder is not None else replace(trainer)
    result = train_classifier(model, data, config, regularizer=regularizer, loss=loss or classification_loss)
    model.float()
    return {"train": result.to_dict(), "validation": data.evaluate(model, "validation"),
            "test": data.evaluate(model, "test")}


def open_task_job(job: str, setup: Any, trainer: Any, run: Any, **sections: Any) -> tuple[Any, Any, Any]:
    """The start a single-task job shares: seed, load ``setup.task`` and the encoder ``setup.backbone``,
    write ``config.json`` (the job, its setup, ``sections`` such as the method's config, the trainer,
    backbone, task and environment; a resumed run's settings are compared there) and tokenise the task.

    Returns ``(task, backbone, data)``; task and data are None when the setup names no task.
    """
    from dataclasses import asdict

    from plmkit.backbones import load_encoder
    from plmkit.runs import environment
    from plmkit.textclf import TaskData
    from plmkit.trainer import seed_everything

    seed_everything(trainer.seed)
    task = setup.load(setup.task) if setup.task else None
    backbone = load_encoder(setup.backbone)
    run.write_json("config.json", {"job": job, "setup": asdict(setup),
                                   **{name: asdict(value) for name, value in sections.items()},
                                   "trainer": asdict(trainer), "backbone": backbone.signature(),
                                   "task": task.describe() if task else None, "environment": environment()})
    data = TaskData(task, backbone.tokenizer, setup.max_length, model_config=backbone.config) if task else None
    return task, backbone, data


def run_job(args: argparse.Namespace, job: str, label: str, work: Callable[[Any, Any], dict[str, Any]],
            summary: Callable[[dict[str, Any], Path], None] | None = None,
            trainer_defaults: dict[str, Any] | None = None) -> int:
    """Open the run folder, log into it, run ``work(trainer_config, run)``, print ``summary`` once.

    ``--resume`` continues the run in ``--output-dir`` (its settings are compared with this one's when
    the job writes its config); a non-empty folder without ``--resume`` is refused unless
    ``--overwrite`` is given. A failure is written into ``run.log`` before it propagates.
    """
    from plmkit import distributed
    from plmkit.cliargs import build_dataclass, quiet_libraries
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    quiet_libraries()
    resume = bool(getattr(args, "resume", False))
    run = RunFolder.create(job, args.output_dir, label=label, resume=resume,
                           overwrite=bool(getattr(args, "overwrite", False)))
    run.start_log()
    try:
        trainer = build_dataclass(TrainerConfig, args, output_dir=str(run.path), **(trainer_defaults or {}))
        metrics = work(trainer, run)
    except BaseException as error:
        run.record_failure(error)
        raise
    finally:
        run.stop_log()
    if summary is not None and distributed.is_main_process():
        summary(metrics, run.path)
    return 0
