"""The job behind ``plmkit generate``: spec -> synthetic data set -> tiny task model -> real accuracy.

Steps, all into one run folder: check that the real evaluation task (if any) uses the spec's label
names; generate (``generation/raw.rank*.jsonl``, resumable) unless ``--synthetic`` names a data set
made earlier; filter (with ``--consistency``, also dropping samples that the generator's zero-shot
prompting labels otherwise) and write ``generation/synthetic/`` (JSONL + ``dataset/``); train the
task model on it, selecting on the synthetic validation split; score it on the real task; and, in the
same run, the two baselines: zero-shot prompting of the generator, and the same task model trained
on the real training split (the supervised ceiling; selected on rows held out of that split, never
on the real split it is scored on).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from plmkit import distributed
from plmkit.backbones import DEFAULT_CAUSAL_LM
from plmkit.errors import ConfigError
from plmkit.generation.dataset import write_synthetic
from plmkit.generation.losses import NOISE_ROBUST_LOSSES, NoiseRobustLoss
from plmkit.generation.spec import TaskSpec, load_spec
from plmkit.generation.task_models import TaskModelConfig, build_task_model
from plmkit.generation.zerogen import GenerationConfig, synthesise
from plmkit.generation.zeroshot import label_agreement, zero_shot_accuracy
from plmkit.jobs import DataArgs
from plmkit.runs import RunFolder, environment
from plmkit.tasks import load_task
from plmkit.textclf import TaskData, train_classifier
from plmkit.trainer import TrainerConfig

logger = logging.getLogger("plmkit")
EVAL_SPLITS = ("validation", "test")


@dataclass
class GenerateSetup(DataArgs):
    """What to synthesise, with which generator, and what to compare it with."""

    spec: str = "sentiment"
    """A built-in task spec (sentiment, topic, nli) or a YAML/JSON spec file."""
    generator: str = DEFAULT_CAUSAL_LM
    """The causal LM that writes the data: a bundled asset, a local folder or a hub id."""
    eval: str | None = None
    """A real task to score on (built-in, file/folder, hub id); its label names must be the spec's."""
    eval_split: str = "validation"
    """The real split the zero-shot baseline runs on and the summary headlines ('validation' or 'test')."""
    synthetic: str | None = None
    """Train on this synthetic data set (a folder written earlier) instead of generating."""
    generation_batch_size: int = 32
    """Sequences per generation forward pass."""
    generation_seed: int = 0
    """Seed of the sampling (with the chunk index it fixes every sample)."""
    held_out: float = 0.1
    """Fraction of the synthetic set for each of its validation (model selection) and test splits."""
    loss: str = "ce"
    """Task-model loss: 'ce', or noise-robust 'rce', 'sce' (0.1 CE + 1.0 RCE), 'gce' (q = 0.7)."""
    zero_shot: bool = True
    """Also score zero-shot prompting of the generator on the real data."""
    supervised: bool = True
    """Also train the task model on the real training split (the supervised ceiling)."""
    consistency: bool = False
    """Drop synthetic samples whose label the generator's own zero-shot prompting (the spec's
    zero_shot template) does not pick; counted as 'label_mismatch'."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_split not in EVAL_SPLITS:
            raise ConfigError(f"--eval-split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        if self.loss not in NOISE_ROBUST_LOSSES:
            raise ConfigError(f"--loss must be one of {NOISE_ROBUST_LOSSES}, got {self.loss!r}")
        if not 0 < self.held_out < 0.5:
            raise ConfigError(f"--held-out must be in (0, 0.5), got {self.held_out}")
        if self.generation_batch_size < 1 or self.generation_seed < 0:
            raise ConfigError("--generation-batch-size must be >= 1 and --generation-seed >= 0")
        if self.consistency and self.synthetic:
            raise ConfigError("--consistency filters samples when the synthetic set is written; --synthetic names "
                              "a set written earlier: drop one of the two (or regenerate into a new run)")


def load_eval_task(setup: GenerateSetup, spec: TaskSpec) -> Any:
    """The real task, its label ids named as the spec's labels; a mismatch is a ConfigError."""
    from plmkit.tasks.builtins import BUILTINS

    task = setup.load(setup.eval) if setup.eval in BUILTINS else setup.load(setup.eval, label_names=spec.labels)
    if task.label_names != spec.labels:
        raise ConfigError(f"--eval {setup.eval}: its labels are {task.label_names} but spec {spec.name!r} "
                          f"makes {spec.labels}; evaluate on a task with the spec's label names (in that order) "
                          "or write a spec whose 'labels' match the task")
    if len(task.text_fields) != (2 if spec.pair else 1):
        raise ConfigError(f"--eval {setup.eval} has text fields {list(task.text_fields)} but spec {spec.name!r} "
                          f"is a {'pair' if spec.pair else 'single-text'} task")
    return task


def supervised_task(real: Any, held_out: float, seed: int) -> Any:
    """The real training split with ``held_out`` of it carved out (seeded) for model selection.

    The supervised ceiling must not select on the real validation split it is then scored on (nor
    see it at all): it trains on the rest of the training rows and is scored on the real splits.
    """
    from plmkit.tasks import task_from_frames
    from plmkit.tasks.splits import carve

    frame = real.train.to_pandas()
    cut = max(1, round(held_out * len(frame)))
    if len(frame) - cut < 1:
        raise ConfigError(f"the real training split of {real.name} has {len(frame)} rows: too few to hold out "
                          f"{held_out:.0%} for selecting the supervised baseline; pass --no-supervised")
    strata = frame[real.label_field].to_numpy() if not real.is_regression else None
    frame[real.label_field] = [real.label_names[i] for i in frame[real.label_field]]
    train, held = carve(frame, strata, seed, [cut], real.name)  # seeded, stratified by class
    return task_from_frames(f"{real.name}-supervised", train, held, held, text_fields=list(real.text_fields),
                            label_field=real.label_field, label_names=list(real.label_names), seed=seed)


def _texts(task: Any) -> list[str]:
    return [text for field in task.text_fields for text in task.train[field]]


def train_task_model(task: Any, model_config: TaskModelConfig, trainer: TrainerConfig, loss: str,
                     max_length: int, folder: Path, real: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train the task model on ``task`` (selecting on its validation split); score it there and on ``real``."""
    model, tokenizer = build_task_model(model_config, _texts(task), task.num_labels, max_length, trainer.seed)
    data = TaskData(task, tokenizer, max_length)
    result = train_classifier(model, data, replace(trainer, output_dir=str(folder), metric=None),
                              loss=NoiseRobustLoss(loss))
    model.float()
    scores = {"train": result.to_dict(), "synthetic_validation": data.evaluate(model, "validation"),
              "synthetic_test": data.evaluate(model, "test")}
    if real is not None:
        real_data = TaskData(real, tokenizer, max_length)
        scores.update({split: real_data.evaluate(model, split) for split in EVAL_SPLITS})
    return model, tokenizer, scores


def run_generate(setup: GenerateSetup, generation: GenerationConfig, model_config: TaskModelConfig,
                 trainer: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    spec = load_spec(setup.spec)
    run.write_config({"setup": asdict(setup), "generation": asdict(generation), "task_model": asdict(model_config),
                      "spec": spec.to_dict(), "trainer": asdict(trainer), "environment": environment()})
    if setup.consistency and spec.zero_shot is None:
        raise ConfigError(f"--consistency needs the spec's 'zero_shot' template (spec {spec.name!r} has none); "
                          "add one with {label} and {text}, or drop --consistency")
    real = load_eval_task(setup, spec) if setup.eval else None
    metrics: dict[str, Any] = {"spec": spec.name, "labels": spec.labels, "generator": setup.generator,
                               "eval": setup.eval, "eval_split": setup.eval_split}
    backbone = None
    if setup.synthetic:
        synthetic_path = Path(setup.synthetic)
    else:
        from plmkit.backbones import load_causal_lm

        backbone = load_causal_lm(setup.generator)
        folder = run.path / "generation"
        metrics["generation"] = synthesise(backbone, spec, generation, folder, setup.generation_batch_size,
                                           progress=trainer.progress)
        if distributed.is_main_process():
            agree = (lambda kept: label_agreement(backbone, spec, kept)) if setup.consistency else None
            metrics["synthetic"] = write_synthetic(folder, spec, setup.held_out, setup.generation_seed, agree=agree)
        distributed.barrier()
        synthetic_path = folder / "synthetic"
    synthetic = load_task(str(synthetic_path), label_names=spec.labels, seed=setup.data_seed)  # all of it
    _, _, metrics["synthetic_model"] = train_task_model(synthetic, model_config, trainer, setup.loss,
                                                        setup.max_length, run.path / "synthetic_model", real)
    if real is not None and setup.zero_shot:
        if backbone is None:
            from plmkit.backbones import load_causal_lm

            backbone = load_causal_lm(setup.generator)
        metrics["zero_shot"] = zero_shot_accuracy(backbone, spec, real, setup.eval_split)
    if real is not None and setup.supervised:
        _, _, scores = train_task_model(supervised_task(real, setup.held_out, setup.data_seed), model_config,
                                        trainer, "ce", setup.max_length, run.path / "supervised_model", real)
        metrics["supervised"] = {"train": scores["train"], "held_out": scores["synthetic_validation"],
                                 **{split: scores[split] for split in EVAL_SPLITS}}
    run.write_json("metrics.json", metrics)
    return metrics
