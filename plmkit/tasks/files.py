"""Reading user files (CSV, TSV, JSON, JSON Lines, parquet; optionally compressed) and hub data sets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from plmkit.tasks.base import CSV_NA, FILES_HINT, OPENERS, SUPPORTED_EXTENSIONS, TaskError
from plmkit.tasks.builtins import builtin_task_names

_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


def extension(path: Path) -> str:
    """The data extension, under any compression suffix (``a.jsonl.gz`` -> ``.jsonl``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in OPENERS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text, decompressing ``.gz``/``.bz2``/``.xz``."""
    with OPENERS.get(path.suffix.lower(), open)(path, "rt", encoding="utf-8") as handle:
        return handle.read()


def _read_json_records(path: Path) -> list[Any]:
    """A JSON array (or ``{"data": [...]}``) of objects, or JSON Lines."""
    text = read_text(path)
    if extension(path) == ".json" and text.lstrip()[:1] in ("[", "{"):
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


def read_file(path: Path) -> pd.DataFrame:
    """One table from a data file; an unreadable or empty file is a TaskError naming it."""
    ext = extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise TaskError(f"{path}: unsupported file extension {ext or '(none)'!r}; "
                        f"fix: convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}")
    try:
        if ext == ".parquet":
            frame = pd.read_parquet(path)
        elif ext in (".csv", ".tsv"):  # TSV unquoted: GLUE-style files hold unbalanced quote characters
            tsv = {"sep": "\t", "quoting": 3} if ext == ".tsv" else {}
            frame = pd.read_csv(path, **tsv, **CSV_NA)
        else:
            records = _read_json_records(path)
            if not all(isinstance(r, dict) for r in records):
                raise TaskError(f'{path}: each record must be an object like {{"text": ..., "label": ...}}')
            frame = pd.DataFrame.from_records(records)
    except TaskError:
        raise
    except (ValueError, OSError, EOFError) as err:  # EmptyDataError and UnicodeDecodeError are ValueErrors
        raise TaskError(f"{path}: could not read it as {ext} ({type(err).__name__}: {err}); "
                        "fix: check the file's format and that it is UTF-8") from err
    if len(frame) == 0:
        raise TaskError(f"{path}: the file is empty (no rows); fix: add labelled rows or remove the file")
    return frame


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map splits to files by name (``train.jsonl``, ``dev.tsv``, ``stsb_test.jsonl``); a lone file: train."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and extension(p) in SUPPORTED_EXTENSIONS)
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
                        f"(it holds {sorted(p.name for p in folder.iterdir())[:20]}); fix: {FILES_HINT}")
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
            f"wrong ({type(err).__name__}: {str(err)[:200]}); fix: use a built-in task or {FILES_HINT}"
        ) from err
    frames, names, features = {}, {}, {}
    for split_name, dataset in loaded.items():
        split = _SPLIT_ALIASES.get(split_name, "validation" if split_name.startswith("validation") else "")
        if split and split not in frames:
            frames[split], names[split] = dataset.to_pandas(), f"{spec} [{split_name}]"
            features = features or dict(dataset.features)
    return frames, names, features


def read_source(spec: str) -> tuple[dict, dict[str, str], dict[str, Any], str, dict[str, Any]]:
    """Frames per split from a local file or folder, else the hub; a path-like spec never goes to the hub."""
    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():
        files = find_split_files(path) if path.is_dir() else {"train": path}
        frames = {s: read_file(p) for s, p in files.items()}
        kind = "folder" if path.is_dir() else "file"
        names = {s: str(p) for s, p in files.items()}
        name = path.resolve().name if path.is_dir() else path.stem
        return frames, names, {}, name, {"source": f"local {kind} {path}"}
    if spec.startswith(("/", ".", "~")) or extension(path) in SUPPORTED_EXTENSIONS:
        raise TaskError(f"{spec}: no such file or folder, and not a built-in task "
                        f"({', '.join(builtin_task_names())}); fix: check the path")
    frames, names, features = _read_hub(spec)
    return frames, names, features, spec, {"source": f"hub data set {spec}"}
