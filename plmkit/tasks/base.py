"""The Task record, its error type and the constants shared by the loaders."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets

from plmkit.errors import PlmkitError

SPLITS = ("train", "validation", "test")
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
HELD_OUT_FRACTION = 0.1  # validation and test each get 10% when carved: 80/10/10
OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
FILES_HINT = "pass a .csv/.tsv/.jsonl/.json/.parquet file or a folder of train.*, validation.*, test.*"
CSV_NA = {"keep_default_na": False, "na_values": [""]}  # "NA" or "null" are texts; empty cells are missing


class TaskError(PlmkitError):
    """Bad task input; the message names the file or task, the problem and how to fix it."""


@dataclass
class Task:
    """A labelled text task with fixed train/validation/test splits."""

    name: str
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    text_fields: tuple[str, ...]
    """One column (single sentence) or two (sentence pair)."""
    label_field: str = "label"
    """Integer class ids (classification) or floats (regression) in every split."""
    label_names: list[str] | None = None
    """Class names indexed by id; None means regression."""
    metric: str = "accuracy"
    """Primary metric, a key of ``plmkit.metrics.compute_metrics``' result."""
    split_info: dict = field(default_factory=dict)
    """Source, seed, sizes, how splits were made and what was dropped, for the run folder."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.text_fields) <= 2:
            raise TaskError(f"task {self.name!r}: text_fields must be 1 or 2 columns, not {self.text_fields}")

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    def fingerprint(self) -> str:
        """sha256 over the rows of every split as they will be used (after splitting and
        subsampling; every column): other rows, even at the same sizes and settings, give another
        fingerprint. Caches and store keys built from a task include it."""
        digest = hashlib.sha256()
        for split in SPLITS:
            dataset = getattr(self, split)
            rows = dataset.with_format(None)[:] if len(dataset) else {}
            digest.update(json.dumps({"split": split, "rows": rows}, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able summary to store next to a run's results."""
        return {
            "name": self.name, "type": "regression" if self.is_regression else "classification",
            "text_fields": list(self.text_fields), "label_field": self.label_field,
            "label_names": self.label_names, "num_labels": self.num_labels, "metric": self.metric,
            "sizes": {s: len(getattr(self, s)) for s in SPLITS}, "split_info": self.split_info,
        }
