"""Columns, texts and labels: detect the columns, check every text, encode labels as ids or floats.

Labels are classified per value as 'number' (numeric strings included, as a CSV may hold), 'string'
or 'missing'. Numbers that are all integers are class ids unless regression is asked for; any
non-integer number makes the task a regression. The training split defines the classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from plmkit.tasks.base import TaskError

TEXT_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("text_a", "text_b"), ("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
    ("question", "sentence"), ("question", "passage"), ("text",), ("sentence",), ("content",), ("review",),
)
LABEL_CANDIDATES = ("label", "labels", "score", "gold_label", "class", "category", "sentiment")


def resolve_columns(frames: dict, names: dict[str, str], text_fields: tuple[str, ...] | None,
                    label_field: str | None) -> tuple[tuple[str, ...], str]:
    """Use the given columns or detect common ones (text, text_a+text_b, sentence1+sentence2... / label)."""
    columns, first = list(next(iter(frames.values())).columns), next(iter(names.values()))
    text_fields = text_fields or next((c for c in TEXT_CANDIDATES if set(c) <= set(columns)), None)
    if text_fields is None:
        raise TaskError(f"{first}: no text column found (looked for {[list(c) for c in TEXT_CANDIDATES]}); "
                        f"available columns: {columns}; fix: name them with text_fields=[...] (--text-field)")
    found = [c for c in LABEL_CANDIDATES if c in columns and c not in text_fields]
    label_field = label_field or (found[0] if found else "")
    if not label_field or label_field in text_fields:
        raise TaskError(f"{first}: no label column found (looked for {list(LABEL_CANDIDATES)}, "
                        "not one of the text fields); "
                        f"available columns: {columns}; fix: name it with label_field=... (--label-field)")
    options = dict.fromkeys(text_fields, "text_fields=[...] (--text-field)")
    options[label_field] = "label_field=... (--label-field)"
    for split, frame in frames.items():
        for column in [c for c in options if c not in frame.columns]:
            raise TaskError(f"{names[split]}: missing column {column!r}; available columns: "
                            f"{list(frame.columns)}; fix: name the right column with {options[column]}")
    return tuple(text_fields), label_field


def check_texts(frame: pd.DataFrame, fields: tuple[str, ...], source: str) -> None:
    """Every value of the text columns is a string, else a TaskError naming the first bad row."""
    for column in fields:
        bad = ~frame[column].map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            value = frame[column].iloc[row]
            raise TaskError(
                f"{source}: column {column!r} row {row + 1} holds {value!r} ({type(value).__name__}), "
                f"not text ({int(bad.sum())} such rows); fix: fill in or drop those rows, or choose the "
                "text columns with text_fields=[...] (--text-field)"
            )


def label_kind(value: Any) -> str:
    """'number', 'string' or 'missing'; numeric strings (as a CSV may hold) count as numbers."""
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return "missing" if pd.isna(value) else "number"
    if isinstance(value, str):
        try:
            return "number" if math.isfinite(float(value)) else "string"
        except ValueError:
            return "string"
    return "missing" if value is None or value is pd.NA else "string"


def drop_unlabelled(frames: dict, names: dict[str, str], label: str, info: dict) -> None:
    """Drop evaluation splits with all labels hidden (-1 or empty), as GLUE test sets; they get carved."""
    for split in [s for s in ("validation", "test") if s in frames and "train" in frames]:
        kinds = [(label_kind(v), v) for v in frames[split][label]]
        if all(k == "missing" or (k == "number" and float(v) == -1) for k, v in kinds):
            info.setdefault("ignored", []).append(f"{names[split]}: no labels (all -1 or empty)")
            del frames[split], names[split]


def _label_type(frames: dict, names: dict[str, str], label: str) -> str:
    """Check every label is present and all are of one kind; return that kind."""
    seen: dict[str, tuple[str, int, Any]] = {}
    for split, frame in frames.items():
        for row, value in enumerate(frame[label].tolist(), 1):
            kind = label_kind(value)
            if kind == "missing":
                raise TaskError(f"{names[split]}: row {row} has no value in label column {label!r}; "
                                "fix: fill in the label or drop the row")
            seen.setdefault(kind, (names[split], row, value))
    if len(seen) > 1:
        (s1, r1, v1), (s2, r2, v2) = seen["number"], seen["string"]
        raise TaskError(f"{s2}: label column {label!r} mixes numbers and strings ({s1} row {r1}: {v1!r}; "
                        f"{s2} row {r2}: {v2!r}); fix: use one label type, all class names or all numbers")
    return next(iter(seen))


def encode_labels(frames: dict, names: dict[str, str], label: str, task_type: str | None,
                  label_names: list[str] | None, info: dict) -> tuple[dict, list[str] | None]:
    """Map labels to ids (classification) or floats (regression); the training split defines the classes."""
    kind = _label_type(frames, names, label)
    floats = {s: f[label].astype(float) for s, f in frames.items()} if kind == "number" else {}
    integral = all(bool((v == v.round()).all()) for v in floats.values())
    regression = task_type == "regression" or (task_type is None and kind == "number" and not integral)
    if regression and (kind == "string" or label_names):
        raise TaskError(f"{next(iter(names.values()))}: a regression task needs numeric labels and no "
                        "label_names; fix: drop task_type='regression' (or label_names)")
    if regression:
        info["label_type"] = "regression" + ("" if task_type else " (detected: labels are not all integers)")
        return {s: f.assign(**{label: floats[s]}) for s, f in frames.items()}, None
    if not integral:
        raise TaskError(f"{next(iter(names.values()))}: labels in column {label!r} are not integer class "
                        "ids; fix: pass task_type='regression' for scores")
    return _encode_classes(frames, names, label, kind, label_names, info)


def _encode_classes(frames: dict, names: dict[str, str], label: str, kind: str,
                    label_names: list[str] | None, info: dict) -> tuple[dict, list[str]]:
    ref = "train" if "train" in frames else next(iter(frames))
    key: Callable[[Any], Any] = str if kind == "string" else (lambda v: int(float(v)))
    found = sorted({key(v) for v in frames[ref][label]})
    classes = list(label_names) if label_names else [str(v) for v in found]
    if kind == "string":
        mapping = {name: i for i, name in enumerate(classes)}
    else:
        mapping = {i: i for i in range(len(classes))} if label_names else {v: i for i, v in enumerate(found)}
        if mapping != {i: i for i in range(len(mapping))}:
            info["label_ids_remapped"] = {str(v): i for v, i in mapping.items()}
    frames = {s: _map_labels(f, label, mapping, names[s], key) for s, f in frames.items()}
    if frames[ref][label].nunique() < 2:
        raise TaskError(f"{names[ref]}: the training data has a single class ({found[0]!r}) in column "
                        f"{label!r}; fix: add rows of other classes (or task_type='regression' for scores)")
    info["label_type"] = f"classification ({kind} labels)"
    return frames, classes


def _map_labels(frame: pd.DataFrame, label: str, mapping: dict, source: str,
                key: Callable[[Any], Any]) -> pd.DataFrame:
    ids = []
    for row, value in enumerate(frame[label].tolist(), 1):
        if key(value) not in mapping:
            raise TaskError(
                f"{source}: unknown label {value!r} in column {label!r} at row {row}; known labels (from "
                f"the training split or label_names): {list(mapping)}; fix: add training rows with it, "
                "list every label with label_names=[...], or drop the row"
            )
        ids.append(mapping[key(value)])
    return frame.assign(**{label: ids})
