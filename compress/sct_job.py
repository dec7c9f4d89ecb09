"""The job behind ``plmkit embed``: train small sentence encoders with SCT and baselines, evaluate, export.

Flow: read the training sentences (a text file, a table or a built-in task's texts) -> load the student
and keep ``--layers`` -> score the raw student (and the teacher) on every evaluation set -> for each
method, train a copy of the student on the same sentences with the same trainer settings -> score it
and write it as a SentenceTransformer folder ``<run>/<method>/`` -> ``metrics.json`` with Spearman x100,
training time, sentences/s and parameter counts per model.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.backbones import DEFAULT_ENCODER, load_encoder
from plmkit.compress.sct import SCTConfig
from plmkit.compress.sct_train import (
    LEE,
    METHODS,
    TEACHER_METHODS,
    load_eval_pairs,
    load_teacher,
    method_views,
    teacher_embeddings,
    train_method,
)
from plmkit.errors import ConfigError
from plmkit.jobs import DataArgs
from plmkit.runs import RunFolder, environment
from plmkit.trainer import TrainerConfig, seed_everything

logger = logging.getLogger("plmkit")
DEFAULT_TEACHER = "mpnet-base"


@dataclass
class EmbedSetup(DataArgs):
    """Which student, teacher, sentences and evaluation sets; which methods to compare."""

    backbone: str = DEFAULT_ENCODER
    """Student: a bundled asset name, a local model folder (e.g. an MPO merged/ folder) or a hub id (--model)."""
    layers: str | None = None
    """Keep these student layers: a count k (the first k) or indices like 0,2,4 (none: all)."""
    teacher: str | None = None
    """Teacher for sct-distill and mse: a bundled asset (mpnet-base) or any SentenceTransformer path."""
    data: str = "rotten-tomatoes"
    """Training sentences: a .txt file (one per line), a table with a text column, or a built-in task."""
    eval: str = LEE
    """Comma-separated STS pair sets: 'lee' (bundled), a TSV/CSV/JSONL of (a, b, score), or a folder."""
    methods: str | None = None
    """Comma-separated: sct, sct-distill, simcse, mse (none: sct-distill,simcse,mse with a teacher, else sct,simcse)."""
    teacher_cache: str | None = None
    """Folder of cached teacher embeddings (none: <plmkit cache>/teacher-embeddings)."""
    evaluate_teacher: bool = True
    """Also score the teacher on the evaluation sets."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for method in self.method_list():
            if method not in METHODS:
                raise ConfigError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")
            if method in TEACHER_METHODS and not self.teacher:
                raise ConfigError(f"--methods {method} needs --teacher (e.g. --teacher {DEFAULT_TEACHER})")
        if not [s for s in self.eval.split(",") if s.strip()]:
            raise ConfigError("--eval names no evaluation set; use 'lee' or a scored-pair file")
        self.layer_indices(None)

    def method_list(self) -> list[str]:
        if self.methods:
            return [m.strip() for m in self.methods.split(",") if m.strip()]
        return ["sct-distill", "simcse", "mse"] if self.teacher else ["sct", "simcse"]

    def layer_indices(self, depth: int | None) -> list[int] | None:
        """``--layers`` as indices (a count k means 0..k-1); checked against ``depth`` when known."""
        if self.layers is None or str(self.layers).strip() == "":
            return None
        try:
            parts = [int(p) for p in str(self.layers).split(",") if p.strip()]
        except ValueError as error:
            raise ConfigError(f"--layers must be a count or comma-separated indices, got {self.layers!r}") from error
        indices = list(range(parts[0])) if len(parts) == 1 else parts
        if not indices or (depth is not None and max(indices) >= depth) or min(indices) < 0:
            raise ConfigError(f"--layers {self.layers!r} does not fit a model with {depth} layers")
        return indices


def encoder_parameters(encoder: nn.Module) -> int:
    return sum(p.numel() for p in encoder.parameters())


def _sentences(setup: EmbedSetup) -> tuple[list[str], dict[str, Any]]:
    from plmkit.tasks import load_sentences

    corpus = load_sentences(setup.data, text_field=setup.fields())  # every named column, row by row
    sentences = list(dict.fromkeys(corpus.sentences))
    if setup.max_train_samples and len(sentences) > setup.max_train_samples:
        sentences = random.Random(setup.data_seed).sample(sentences, setup.max_train_samples)
    return sentences, {**corpus.describe(), "unique_used": len(sentences)}


def _scores(evaluators: dict[str, Any], model: nn.Module) -> dict[str, float]:
    return {name: 100 * evaluator(model)["spearman"] for name, evaluator in evaluators.items()}


def _teacher_vectors(setup: EmbedSetup, config: SCTConfig, sentences: list[str], methods: list[str],
                     seed: int) -> tuple[dict[str, tuple], Any]:
    if not any(m in TEACHER_METHODS for m in methods):
        return {}, None
    from plmkit.assets import cache_dir

    teacher = load_teacher(setup.teacher)
    view1, view2 = method_views(sentences, config, seed)
    texts = list(dict.fromkeys(sentences + (view1 + view2 if "sct-distill" in methods else [])))
    cache = setup.teacher_cache or cache_dir() / "teacher-embeddings"
    started = time.perf_counter()
    vectors = teacher_embeddings(teacher, setup.teacher, texts, cache, setup.max_length)
    logger.info("teacher embeddings of %d texts in %.1f s", len(texts), time.perf_counter() - started)
    row = {text: i for i, text in enumerate(texts)}
    pick = lambda items: vectors[[row[t] for t in items]]  # noqa: E731
    out = {"mse": (pick(sentences), pick(sentences))}
    if "sct-distill" in methods:
        out["sct-distill"] = (pick(view1), pick(view2))
    return out, teacher


def embed(setup: EmbedSetup, config: SCTConfig, trainer: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    """Train, score and export every method in ``setup.methods``; returns (and writes) the metrics."""
    from plmkit.anatomy import locate
    from plmkit.embeddings import STSEvaluator, export_sentence_transformer, sentence_transformer_pooling
    from plmkit.layers import keep_layers

    seed_everything(trainer.seed)
    methods = setup.method_list()
    sentences, data_info = _sentences(setup)
    student = load_encoder(setup.backbone)
    indices = setup.layer_indices(len(locate(student.model).layers))
    if indices is not None:
        keep_layers(student.model, indices)
    run.write_json("config.json", {"job": "embed", "setup": asdict(setup), "sct": asdict(config),
                                   "trainer": asdict(trainer), "student": student.signature(),
                                   "data": data_info, "environment": environment()})
    pairs = {spec.strip(): load_eval_pairs(spec.strip()) for spec in setup.eval.split(",") if spec.strip()}
    evaluators = {name: STSEvaluator(p, student.tokenizer, config.pooling, max_length=setup.max_length, name=name)
                  for name, p in pairs.items()}
    metrics: dict[str, Any] = {"student": student.name, "layers": indices, "data": data_info,
                               "eval_sets": list(pairs), "models": {}}
    metrics["models"]["raw student"] = {"spearman": _scores(evaluators, student.model),
                                        "encoder_params": encoder_parameters(student.model)}
    teachers, teacher = _teacher_vectors(setup, config, sentences, methods, trainer.seed)
    if teacher is not None and setup.evaluate_teacher:
        hf, pooling = teacher[0].auto_model, sentence_transformer_pooling(teacher, f"--teacher {setup.teacher}")
        scored = {n: 100 * STSEvaluator(p, teacher.tokenizer, pooling, max_length=setup.max_length)(hf)["spearman"]
                  for n, p in pairs.items()}
        metrics["models"]["teacher"] = {"spearman": scored, "encoder_params": encoder_parameters(hf)}
    for method in methods:
        metrics["models"][method] = _run_method(method, setup, config, trainer, run, student, sentences,
                                                teachers.get(method), evaluators, export_sentence_transformer)
        run.write_json("metrics.json", metrics)
    return metrics


def _run_method(method: str, setup: EmbedSetup, config: SCTConfig, trainer: TrainerConfig, run: RunFolder,
                student, sentences: list[str], teacher: tuple | None, evaluators: dict[str, Any],
                export) -> dict[str, Any]:
    started = time.perf_counter()
    encoder, result = train_method(method, student.model, student.tokenizer, sentences, config,
                                   replace(trainer, output_dir=str(run.path / method / "train")), teacher,
                                   setup.max_length, trainer.seed)
    encoder.float().eval()
    path = export(encoder, student.tokenizer, run.path / method / "model", pooling=config.pooling,
                  max_length=setup.max_length)
    with torch.no_grad():
        scores = _scores(evaluators, encoder)
    logger.info("%s: %s", method, {k: round(v, 2) for k, v in scores.items()})
    return {"spearman": scores, "encoder_params": encoder_parameters(encoder), "train_time_s": result.train_time_s,
            "sentences_per_s": result.samples_per_s, "steps": result.global_step,
            "wall_time_s": time.perf_counter() - started, "model_dir": str(path)}


def summary_rows(metrics: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Table rows: model, Spearman x100 per evaluation set, encoder parameters, training s, sentences/s."""
    sets = metrics["eval_sets"]
    rows = []
    for name, entry in metrics["models"].items():
        rows.append([name] + [round(entry["spearman"][s], 2) for s in sets] + [
            entry["encoder_params"], round(entry["train_time_s"], 1) if "train_time_s" in entry else "",
            round(entry["sentences_per_s"], 1) if "sentences_per_s" in entry else ""])
    return rows, ["model"] + [f"{Path(s).name} spearman" for s in sets] + ["encoder params", "train s", "sent/s"]
