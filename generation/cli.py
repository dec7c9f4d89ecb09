"""``plmkit generate``: synthesise a labelled data set with a causal LM, train a tiny model, compare. Parse, call, print."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from plmkit.cliargs import Flags, add_job_parser, build_dataclass
from plmkit.jobs import run_job
from plmkit.report import format_table

TRAINING_DEFAULTS = {"output_dir": None, "epochs": 5, "batch_size": 32, "learning_rate": 1e-3}


def cmd_generate(args: argparse.Namespace) -> int:
    from plmkit.generation.jobs import GenerateSetup, run_generate
    from plmkit.generation.task_models import TaskModelConfig
    from plmkit.generation.zerogen import GenerationConfig

    setup = build_dataclass(GenerateSetup, args)
    generation = build_dataclass(GenerationConfig, args, seed=setup.generation_seed)
    model_config = build_dataclass(TaskModelConfig, args)
    label = f"{Path(setup.spec).stem}-{generation.n}"
    return run_job(args, "generate", label,
                   lambda trainer, run: run_generate(setup, generation, model_config, trainer, run), print_summary)


def _accuracy(scores: dict[str, Any] | None, split: str) -> Any:
    if not scores or split not in scores:
        return "-"
    return round(100 * scores[split]["accuracy"], 2)


def print_summary(metrics: dict[str, Any], run_path: Path) -> None:
    synthetic = metrics.get("synthetic")
    if synthetic:
        counts = synthetic["filter_counts"]
        rows = [[reason, count] for reason, count in counts.items()]
        print("\n" + format_table(rows, ["filter", "samples"], title="synthetic samples kept and dropped"))
        print(f"kept per label: {synthetic['kept_per_label']}; splits: {synthetic['sizes']}")
    gen = metrics.get("generation")
    if gen and gen.get("samples_per_s"):
        print(f"generated {gen['samples_made']} samples in {gen['seconds']:.1f} s ({gen['samples_per_s']:.2f} "
              f"samples/s); {gen['chunks_found']} of {gen['chunks']} chunks were already on disk")
    model = metrics["synthetic_model"]
    print(f"task model on its synthetic test split: accuracy {_accuracy(model, 'synthetic_test')}")
    if metrics.get("eval"):
        split = metrics["eval_split"]
        zero = metrics.get("zero_shot")
        rows = [["zero-shot prompting of the generator", round(100 * zero["accuracy"], 2) if zero else "-", "-"],
                ["task model trained on synthetic data", _accuracy(model, "validation"), _accuracy(model, "test")],
                ["task model trained on real data (supervised)", _accuracy(metrics.get("supervised"), "validation"),
                 _accuracy(metrics.get("supervised"), "test")]]
        print("\n" + format_table(rows, ["model", "validation acc", "test acc"],
                                  title=f"real task {metrics['eval']} (zero-shot on {split})"))
    print(f"\nrun folder: {run_path}  (metrics.json, generation/synthetic/ (JSONL + dataset/), run.log)")


def register(sub: argparse._SubParsersAction) -> None:
    from plmkit.generation.jobs import GenerateSetup
    from plmkit.generation.task_models import TaskModelConfig
    from plmkit.generation.zerogen import GenerationConfig
    from plmkit.trainer import TrainerConfig

    add_job_parser(
        sub, "generate", cmd_generate,
        [Flags(GenerateSetup, "spec, generator and evaluation"),
         Flags(GenerationConfig, "generation", exclude=("seed",)), Flags(TaskModelConfig, "task model"),
         Flags(TrainerConfig, "task-model training", defaults=TRAINING_DEFAULTS)],
        help="synthesise a labelled data set with a causal LM and train a tiny model",
        description="ZeroGen: prompt --generator per label of --spec, filter the samples into a data set "
                    "(JSONL + datasets folder), train --task-model on it and, with --eval, score it on real data "
                    "next to zero-shot prompting of the generator and the same model trained on real data. "
                    "An interrupted run continues with --resume --output-dir DIR.")
