"""Data beyond labelled classification: unlabelled sentence corpora and scored sentence pairs.

Both are read as given: no splitting, no de-duplication. A sentence corpus drops empty lines (or
empty cells) and counts them; scored pairs keep every row, so an STS test file gives all its pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from plmkit.tasks.base import SUPPORTED_EXTENSIONS, TaskError
from plmkit.tasks.builtins import BUILTINS, builtin_task_names, read_builtin
from plmkit.tasks.files import extension, read_file, read_text
from plmkit.tasks.labels import TEXT_CANDIDATES, label_kind

SENTENCE_COLUMNS = ("text", "sentence", "content", "review", "sentence1", "text_a", "question")
PAIR_COLUMNS = tuple(c for c in TEXT_CANDIDATES if len(c) == 2)
SCORE_COLUMNS = ("score", "label", "similarity", "relatedness_score", "gold_score")
_SENTENCE_FILES = (".txt", *SUPPORTED_EXTENSIONS)


@dataclass
class SentenceCorpus:
    """Sentences in source order, with what was read and dropped."""

    sentences: list[str]
    """Non-empty sentences, stripped of surrounding whitespace."""
    source: str
    """The file, column or built-in task they came from."""
    rows_read: int
    """Lines (``.txt``), rows (built-in tasks) or table cells (a row per text column) read, empty ones included."""
    empty_dropped: int
    """Lines or cells that were empty or only whitespace."""

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sentences)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "sentences": len(self), "rows_read": self.rows_read,
                "empty_dropped": self.empty_dropped}


@dataclass
class ScoredPairs:
    """Sentence pairs with a similarity score each, every row of the file in its order."""

    rows: list[tuple[str, str, float]]
    """``(sentence_a, sentence_b, score)`` per row."""
    source: str
    """The file they came from."""
    text_fields: tuple[str, str]
    """The two text columns used."""
    score_field: str
    """The score column used."""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[str, str, float]]:
        return iter(self.rows)

    @property
    def sentences_a(self) -> list[str]:
        return [row[0] for row in self.rows]

    @property
    def sentences_b(self) -> list[str]:
        return [row[1] for row in self.rows]

    @property
    def scores(self) -> list[float]:
        return [row[2] for row in self.rows]


def _data_file(spec: str | Path, allowed: tuple[str, ...], what: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        raise TaskError(f"{path}: is a folder; fix: pass one {what} file ({', '.join(allowed)})")
    if not path.is_file():
        raise TaskError(f"{spec}: no such file; fix: check the path (a {what} file: {', '.join(allowed)})")
    if extension(path) not in allowed:
        raise TaskError(f"{path}: unsupported file extension {extension(path) or '(none)'!r} for {what}s; "
                        f"fix: convert it to one of {', '.join(allowed)}")
    return path


def _pick(columns: list[str], given: Any, candidates: tuple, source: Path, what: str, flag: str) -> Any:
    """The given column(s) if present, else the first candidate present; a TaskError otherwise."""
    wanted = [given] if isinstance(given, str) else (list(given) if given else None)
    if wanted and not set(wanted) <= set(columns):
        missing = [c for c in wanted if c not in columns]
        raise TaskError(f"{source}: no column {missing}; available columns: {columns}; fix: {flag}")
    if wanted:
        return given
    found = next((c for c in candidates if set([c] if isinstance(c, str) else c) <= set(columns)), None)
    if found is None:
        raise TaskError(f"{source}: no {what} column found (looked for {list(candidates)}); "
                        f"available columns: {columns}; fix: {flag}")
    return found


def _table_texts(path: Path, text_field: str | tuple[str, ...] | None) -> tuple[list[Any], str, list[str]]:
    """The cells of the text column(s), row by row (a1, b1, a2, b2, ... for two columns)."""
    frame = read_file(path)
    picked = _pick(list(frame.columns), text_field, SENTENCE_COLUMNS, path, "text",
                   "name the text column with text_field=...")
    columns = [picked] if isinstance(picked, str) else list(picked)
    cells = [value for row in zip(*(frame[c].tolist() for c in columns), strict=True) for value in row]
    return cells, f"{path} [{', '.join(columns)}]", columns


def _text_lines(path: Path, text_field: str | None) -> tuple[list[Any], str, list[str]]:
    if text_field is not None:
        raise TaskError(f"{path}: a .txt file has one sentence per line and no columns; fix: drop text_field")
    try:
        text = read_text(path)
    except (OSError, EOFError, ValueError) as err:
        raise TaskError(f"{path}: could not read it as text ({type(err).__name__}: {err}); "
                        "fix: save it as UTF-8 text, one sentence per line") from err
    if not text:
        raise TaskError(f"{path}: the file is empty; fix: write one sentence per line")
    return text.splitlines(), str(path), []


def _keep_sentences(values: list[Any], source: str, columns: Sequence[str] = ()) -> list[str]:
    """Strip texts; empty or missing values become '' (dropped later); any other value is an error.

    ``values`` holds a row's cells of ``columns`` one after the other when there are several columns.
    """
    kept, width = [], max(len(columns), 1)
    for i, value in enumerate(values):
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            value = ""
        if not isinstance(value, str):
            where = f"row {i // width + 1}" + (f" column {columns[i % width]!r}" if width > 1 else "")
            raise TaskError(f"{source}: {where} holds {value!r} ({type(value).__name__}), not text; "
                            "fix: choose the text column with text_field=... or fix that row")
        kept.append(value.strip())
    return kept


def load_sentences(spec: str | Path, text_field: str | Sequence[str] | None = None) -> SentenceCorpus:
    """Sentences from a ``.txt`` file (one per line), text columns of a table, or a built-in task.

    Tables are CSV, TSV, JSON Lines, JSON or parquet; the columns are ``text_field`` (one name, or
    several: a pair file's ``("text_a", "text_b")`` gives both sentences of every row, row by row) or
    the first of :data:`SENTENCE_COLUMNS` present. A built-in task gives all its texts,
    whitespace-normalised.
    """
    if not isinstance(text_field, str) and text_field is not None:
        fields = tuple(text_field)
        if not fields or len(set(fields)) != len(fields) or not all(isinstance(f, str) and f for f in fields):
            raise TaskError(f"text_field must name one column or several distinct ones, got {text_field!r}")
        text_field = fields[0] if len(fields) == 1 else fields
    if isinstance(spec, str) and spec in BUILTINS:
        if text_field not in (None, "text"):
            raise TaskError(f"built-in task {spec!r} has one text column, 'text'; fix: drop text_field")
        values = [" ".join(t.split()) if isinstance(t, str) else t for t in read_builtin(spec)["text"]]
        source, columns = f"built-in task {spec!r}", []
    else:
        path = _data_file(spec, _SENTENCE_FILES, f"sentence (or built-in task: {', '.join(builtin_task_names())})")
        reader = _text_lines if extension(path) == ".txt" else _table_texts
        values, source, columns = reader(path, text_field)
    texts = _keep_sentences(values, source, columns)
    sentences = [t for t in texts if t]
    if not sentences:
        raise TaskError(f"{source}: no sentences ({len(texts)} lines or cells, all empty); "
                        "fix: add text, or choose the text column with text_field=...")
    return SentenceCorpus(sentences, source, len(texts), len(texts) - len(sentences))


def _score(value: Any, row: int, path: Path, column: str) -> float:
    if label_kind(value) != "number" or isinstance(value, bool):
        raise TaskError(f"{path}: row {row} has score {value!r} in column {column!r}, not a number; "
                        "fix: give every pair a numeric score, or name the score column with score_field=...")
    return float(value)


def _text(value: Any, row: int, path: Path, column: str) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{path}: row {row} column {column!r} holds {value!r}, not text; "
                        "fix: fill in or drop that row, or name the text columns with text_fields=(a, b)")
    return value


def load_scored_pairs(path: str | Path, *, text_fields: tuple[str, str] | None = None,
                      score_field: str | None = None) -> ScoredPairs:
    """Every ``(a, b, score)`` row of a TSV/CSV/JSONL/JSON/parquet file, as given (no split, no dedup).

    Text columns are ``text_fields`` or the first pair of :data:`PAIR_COLUMNS` present (``text_a`` /
    ``text_b``, ``sentence1`` / ``sentence2``...); the score is ``score_field`` or the first of
    :data:`SCORE_COLUMNS` present.
    """
    file = _data_file(path, SUPPORTED_EXTENSIONS, "scored-pair")
    frame = read_file(file)
    columns = list(frame.columns)
    if text_fields is not None and len(text_fields) != 2:
        raise TaskError(f"{file}: text_fields must name two columns, got {text_fields!r}")
    fields = tuple(_pick(columns, text_fields, PAIR_COLUMNS, file, "sentence-pair",
                         "name them with text_fields=(a, b)"))
    rest = tuple(c for c in SCORE_COLUMNS if c not in fields)
    score = _pick(columns, score_field, rest, file, "score", "name it with score_field=...")
    a, b = fields
    rows = [(_text(x, i, file, a), _text(y, i, file, b), _score(s, i, file, score))
            for i, (x, y, s) in enumerate(zip(frame[a], frame[b], frame[score], strict=True), 1)]
    return ScoredPairs(rows, str(file), (a, b), score)
