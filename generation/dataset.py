"""From raw samples on disk to the synthetic data set: filter, split, write JSONL and a ``datasets`` folder.

The folder ``<out>/synthetic/`` holds ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (label
names as strings; single-text tasks have ``text``, pair tasks ``text_a`` = condition and ``text_b`` =
generated text) and ``dataset/`` (``datasets.DatasetDict.save_to_disk``). It loads back with
``plmkit.tasks.load_task(folder, label_names=spec.labels)``. Held-out splits are drawn per label with
the seed, so every split keeps the label balance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plmkit.generation.filters import drop_disagreeing, filter_samples
from plmkit.generation.spec import TaskSpec
from plmkit.generation.zerogen import iter_raw


def _record(row: dict[str, Any], pair: bool) -> dict[str, Any]:
    if pair:
        return {"text_a": row["condition"], "text_b": row["text"], "label": row["label"]}
    return {"text": row["text"], "label": row["label"]}


def split_rows(rows: list[dict[str, Any]], labels: list[str], held_out: float, seed: int) -> dict[str, list]:
    """Seeded per-label split into train / validation / test (``held_out`` each for the last two)."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    for label in labels:
        members = [row for row in rows if row["label"] == label]
        order = rng.permutation(len(members))
        cut = int(round(held_out * len(members)))
        for rank, index in enumerate(order):
            split = "validation" if rank < cut else "test" if rank < 2 * cut else "train"
            splits[split].append(members[index])
    for split in splits:  # back to generation order, so files read naturally
        splits[split].sort(key=lambda row: (row["chunk"], row["unit"], row["sample"]))
    return splits


def filter_and_split(rows: Iterable[dict[str, Any]], spec: TaskSpec, held_out: float = 0.1, seed: int = 0,
                     agree: Callable[[list[dict[str, Any]]], Sequence[bool]] | None = None,
                     ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The task's filters (then ``agree``, if given) over raw samples, and the kept rows split by label.

    Returns ({"train", "validation", "test"}: rows, filter counts); see :func:`split_rows`.
    """
    kept, counts = filter_samples(rows, spec.filters)
    if agree is not None:
        kept, counts = drop_disagreeing(kept, counts, agree(kept))
    return split_rows(kept, spec.labels, held_out, seed), counts


def write_synthetic(folder: str | Path, spec: TaskSpec, held_out: float = 0.1, seed: int = 0,
                    save_datasets: bool = True,
                    agree: Callable[[list[dict[str, Any]]], Sequence[bool]] | None = None) -> dict[str, Any]:
    """Filter every finished sample in ``folder`` and write ``folder/synthetic``; returns counts and sizes.

    ``agree`` (optional): the model-based last filter, one flag per sample that passed the text
    rules (false: dropped as ``label_mismatch``).
    """
    folder = Path(folder)
    splits, counts = filter_and_split(iter_raw(folder), spec, held_out, seed, agree)
    per_label = {label: sum(row["label"] == label for rows in splits.values() for row in rows) for label in spec.labels}
    out = folder / "synthetic"
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        text = "".join(json.dumps(_record(row, spec.pair), ensure_ascii=False) + "\n" for row in rows)
        (out / f"{split}.jsonl").write_text(text, encoding="utf-8")
    if save_datasets:
        _save_datasets(out, splits, spec)
    return {"filter_counts": counts, "kept_per_label": per_label, "sizes": {s: len(r) for s, r in splits.items()},
            "path": str(out)}


def _save_datasets(out: Path, splits: dict[str, list], spec: TaskSpec) -> None:
    import datasets

    fields = ("text_a", "text_b") if spec.pair else ("text",)
    features = datasets.Features({**{f: datasets.Value("string") for f in fields},
                                  "label": datasets.ClassLabel(names=spec.labels)})
    columns = {split: {f: [_record(r, spec.pair)[f] for r in rows] for f in fields} for split, rows in splits.items()}
    for split, rows in splits.items():
        columns[split]["label"] = [spec.labels.index(r["label"]) for r in rows]
    dataset = datasets.DatasetDict({s: datasets.Dataset.from_dict(c, features=features) for s, c in columns.items()})
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(out / "dataset"))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
