"""Assembling a Task from a built-in corpus, a file or folder, a hub data set or in-memory frames.

Every source goes the same way: resolve the columns, check texts, encode labels, carve missing splits
with the seed, subsample with the seed where asked, convert to ``datasets.Dataset``. The same
arguments therefore always give the same rows.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pandas as pd

from plmkit.metrics import default_metric
from plmkit.tasks.base import SPLITS, Task, TaskError
from plmkit.tasks.builtins import BUILTINS, load_builtin
from plmkit.tasks.files import read_source
from plmkit.tasks.labels import check_texts, drop_unlabelled, encode_labels, resolve_columns
from plmkit.tasks.splits import complete_splits

TextFields = str | tuple[str, ...] | list[str] | None


def _build_task(name: str, splits: dict, text_fields: tuple[str, ...], label: str,
                label_names: list[str] | None, seed: int, limits: dict[str, int | None], info: dict) -> Task:
    """Subsample with the seed where asked, convert to datasets and record sizes and label counts."""
    features = datasets.Features({f: datasets.Value("string") for f in text_fields})
    is_regression = label_names is None
    features[label] = datasets.Value("float32") if is_regression else datasets.ClassLabel(names=label_names)
    built = {}
    for split in SPLITS:
        frame, limit = splits[split], limits[split]
        if limit is not None and len(frame) > limit:
            info.setdefault("subsampled", {})[split] = f"{limit} of {len(frame)} rows, seed {seed}"
            frame = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), limit, replace=False))]
        frame = frame[list(features)].reset_index(drop=True)
        built[split] = datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
    info.update(seed=seed, sizes={s: len(d) for s, d in built.items()})
    if label_names is not None:
        counts = {s: np.bincount(d[label], minlength=len(label_names)).tolist() for s, d in built.items()}
        info["label_counts"] = {s: dict(zip(label_names, c, strict=True)) for s, c in counts.items()}
    metric = default_metric(label_names is None)
    return Task(name, built["train"], built["validation"], built["test"], text_fields, label, label_names,
                metric, info)


def _assemble(name: str, frames: dict, names: dict[str, str], features: dict[str, Any], info: dict,
              text_fields: TextFields, label_field: str | None, task_type: str | None,
              label_names: list[str] | None, seed: int, limits: dict[str, int | None]) -> Task:
    """Columns, texts, labels and splits of tables read from any source, then the Task."""
    fields = (text_fields,) if isinstance(text_fields, str) else (tuple(text_fields) if text_fields else None)
    fields, label = resolve_columns(frames, names, fields, label_field)
    if label_names is None and isinstance(features.get(label), datasets.ClassLabel):
        label_names = list(features[label].names)
    drop_unlabelled(frames, names, label, info)
    for split, frame in frames.items():
        check_texts(frame, fields, names[split])
    frames, classes = encode_labels(frames, names, label, task_type, label_names, info)
    splits, info["splits"] = complete_splits(frames, names, None if classes is None else label, seed)
    return _build_task(name, splits, fields, label, classes, seed, limits, info)


def load_task(
    spec: str,
    *,
    text_fields: TextFields = None,
    label_field: str | None = None,
    task_type: str | None = None,
    label_names: list[str] | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> Task:
    """Load a built-in task, else a local file or folder, else a hub data set (e.g. ``glue/sst2``).

    Missing splits are carved with ``seed`` and ``max_*_samples`` keep a seeded subsample, so the same
    arguments always give the same rows. Raises :class:`TaskError` on any bad input.
    """
    _check_options(task_type, seed, max_train_samples, max_eval_samples)
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_eval_samples}
    if spec in BUILTINS:
        if text_fields or label_field or task_type or label_names:
            raise TaskError(f"built-in task {spec!r} has fixed columns and labels; "
                            "fix: drop text_fields/label_field/task_type/label_names")
        splits, classes, info = load_builtin(spec, seed)
        return _build_task(spec, splits, ("text",), "label", classes, seed, limits, info)
    frames, names, features, name, info = read_source(spec)
    return _assemble(name, frames, names, features, info, text_fields, label_field, task_type, label_names,
                     seed, limits)


def task_from_frames(
    name: str,
    train: pd.DataFrame,
    validation: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    *,
    text_fields: TextFields = None,
    label_field: str | None = None,
    label_names: list[str] | None = None,
    task_type: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> Task:
    """A Task from in-memory pandas frames, checked and split exactly as a file would be.

    A missing validation or test split is carved (10%) from ``train`` with ``seed``; the frames given
    are not modified. Columns are detected as for files unless named.
    """
    _check_options(task_type, seed, max_train_samples, max_eval_samples)
    if not isinstance(name, str) or not name:
        raise TaskError(f"task_from_frames: name must be a non-empty string, got {name!r}")
    given = {"train": train, "validation": validation, "test": test}
    frames, names = {}, {}
    for split, frame in given.items():
        if frame is None and split != "train":
            continue
        source = f"task {name!r} {split} frame"
        if not isinstance(frame, pd.DataFrame):
            raise TaskError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}; "
                            "fix: pass pandas.DataFrame(...) with text and label columns")
        if len(frame) == 0:
            raise TaskError(f"{source}: the frame is empty (no rows); fix: add labelled rows or leave it out")
        frames[split], names[split] = frame.reset_index(drop=True), source
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_eval_samples}
    info = {"source": f"in-memory frames ({', '.join(frames)}) of task {name!r}"}
    return _assemble(name, frames, names, {}, info, text_fields, label_field, task_type, label_names, seed,
                     limits)


def _check_options(task_type: str | None, seed: int, *limits: int | None) -> None:
    if task_type not in (None, "classification", "regression"):
        raise TaskError(f"task_type={task_type!r} is not supported; "
                        "fix: use 'classification', 'regression' or None")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TaskError(f"seed must be an integer, got {seed!r}")
    for limit in limits:
        if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
            raise TaskError(f"max_train_samples/max_eval_samples must be positive integers or None, "
                            f"got {limit!r}")
